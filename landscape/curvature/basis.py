"""An orthonormal Krylov basis kept in bounded memory: rows in blocks, in a chosen dtype, on a chosen device.

Lanczos with full re-orthogonalization holds every basis vector: steps x P numbers, the largest
thing a curvature run keeps (on a 124M-parameter model, 1 GB per row in float64). Here the rows are
appended to blocks allocated as needed (growing never copies what is held), stored in float32 when
asked (half the memory; the products of a float32 model are no more precise than that), and held on
the host when the vectors live on a GPU. Vectors in and out are on the working device, in any dtype.
"""

from __future__ import annotations

import torch

BLOCK_BYTES = 256 << 20  # rows are grouped into blocks of at most this many bytes (at least one row; at most 16)
COMBINE_BYTES = 16 << 20  # new rows are formed this many bytes of columns at a time


def row_bytes(n: int, dtype: torch.dtype) -> int:
    """Bytes of one basis row of length n in `dtype`."""
    return n * torch.finfo(dtype).bits // 8


def basis_dtype(choice: str, rows: int, n: int, budget: int) -> torch.dtype:
    """The dtype of a basis of `rows` rows of length n: float64 when `choice` is 'auto' and it fits `budget` bytes
    in float64, else float32; 'float64' or 'float32' as given."""
    if choice == "auto":
        return torch.float64 if rows * n * 8 <= budget else torch.float32
    return {"float64": torch.float64, "float32": torch.float32}[choice]


class KrylovBasis:
    """Orthonormal rows q_0, q_1, ... of length n, stored in `dtype` on `device`, in blocks.

    Example:
        >>> B = KrylovBasis(3, torch.float64, "cpu")
        >>> B.append(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
        >>> w = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
        >>> B.project_out(w)
        >>> w.tolist()
        [0.0, 1.0, 0.0]
    """

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device | str) -> None:
        self.n = n
        self.dtype = dtype
        self.device = torch.device(device)
        self.block_rows = max(1, min(16, BLOCK_BYTES // max(1, row_bytes(n, dtype))))
        self._blocks: list[torch.Tensor] = []
        self.rows = 0

    def next_row(self) -> torch.Tensor:
        """The memory of the row `append` adds next (a view, allocated with its block if need be): a product
        written there and made the next vector in place is appended without a copy, and without a P-sized
        vector beside the basis."""
        at = self.rows % self.block_rows
        if at == 0 and len(self._blocks) * self.block_rows <= self.rows:
            self._blocks.append(torch.empty(self.block_rows, self.n, dtype=self.dtype, device=self.device))
        return self._blocks[-1][at]

    def append(self, q: torch.Tensor) -> None:
        """Add a row (a unit vector orthogonal to the others; not checked): copied in, or taken as it is
        when q is `next_row()`."""
        slot = self.next_row()
        if not (q.data_ptr() == slot.data_ptr() and q.dtype == slot.dtype and q.device == slot.device):
            slot.copy_(q)
        self.rows += 1

    def row(self, i: int) -> torch.Tensor:
        """Row i (a view, in the basis dtype, on its device)."""
        return self._blocks[i // self.block_rows][i % self.block_rows]

    def _filled(self) -> list[torch.Tensor]:
        """The blocks, the last one cut to its filled rows."""
        tail = self.rows - (len(self._blocks) - 1) * self.block_rows
        return [*self._blocks[:-1], self._blocks[-1][:tail]] if self._blocks else []

    def project_out(self, w: torch.Tensor) -> None:
        """w -= Q^T (Q w) in place (one Gram-Schmidt pass over all rows). A w of the basis's dtype and device is
        changed a block at a time (block modified Gram-Schmidt, equal in exact arithmetic), no temporary of
        its size; another w through one converted copy and one correction."""
        if not self.rows:
            return
        if w.dtype == self.dtype and w.device == self.device:
            for b in self._filled():
                w.addmv_(b.T, b @ w, alpha=-1.0)
            return
        v = w.to(self.device, self.dtype)
        correction = torch.zeros_like(v)  # one temporary for the whole pass, not one per block
        for b in self._filled():
            correction.addmv_(b.T, b @ v)
        w.sub_(correction.to(w.device))

    def project_out_rows(self, W: torch.Tensor) -> None:
        """W -= (W Q^T) Q in place, for a block of rows W [r, n]."""
        if not self.rows:
            return
        Wb = W.to(self.device, self.dtype)
        correction = torch.zeros_like(Wb)
        for b in self._filled():
            correction.addmm_(Wb @ b.T, b)
        W.sub_(correction.to(W.device))

    def keep_combinations(self, Y: torch.Tensor) -> None:
        """Replace the rows by the k combinations Y^T Q (coefficients Y [rows, k], k <= rows), in place:
        a chunk of columns at a time, so the new rows need no memory beyond the old (a thick restart)."""
        k = Y.shape[1]
        Y = Y.to(self.device, self.dtype)
        blocks = self._filled()
        cols = max(1, COMBINE_BYTES // max(1, row_bytes(k, self.dtype)))
        for c0 in range(0, self.n, cols):
            new = torch.zeros(k, min(cols, self.n - c0), dtype=self.dtype, device=self.device)  # [k, chunk]
            start = 0
            for b in blocks:  # block by block: no copy of the basis's columns (at 10M parameters and 66 rows
                # one 256 MB copy was the run's high-water mark)
                new.addmm_(Y[start : start + b.shape[0]].T, b[:, c0 : c0 + cols])
                start += b.shape[0]
            for i, b in enumerate(blocks):
                part = new[i * self.block_rows : (i + 1) * self.block_rows]
                if not part.shape[0]:
                    break
                b[: part.shape[0], c0 : c0 + cols].copy_(part)
        self.rows = k
        del self._blocks[-(-k // self.block_rows) :]

    def take_combinations(self, Y: torch.Tensor) -> torch.Tensor:
        """The k combinations Y^T Q [k, n] (coefficients Y [rows, k]), made in the basis's own memory
        (`keep_combinations`) and handed out, the basis left empty: k rows beyond what it held at most, not
        k rows beside the whole basis (the eigenvectors at the end of a run on a large model)."""
        self.keep_combinations(Y)
        out = torch.cat(self._filled())
        self._blocks, self.rows = [], 0
        return out
