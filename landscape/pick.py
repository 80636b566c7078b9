"""A sweep strategy as a run used it (name, batch size, points per call, the layouts of its
convolutions), as a results file keeps it so that --resume computes the same numbers; torch-free,
for the readers of results files."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from landscape.names import STRATEGIES


@dataclass(frozen=True)
class Pick:
    """A strategy as a run used it: its name, batch size and points per call, and for the `fused`
    strategies the memory layout of each folded convolution (a letter each, `landscape.fused`'s
    LAYOUT_LETTERS, in graph order): all a resumed run needs to compute each remaining point as the
    run would have (the probe picks them by timing, and each rounds differently)."""

    name: str
    batch_size: int | None = None
    points_per_call: int | None = None
    layouts: str = ""

    def text(self, room: int | None = None) -> str:
        """As a results file keeps it: 'vmap 256 16', 'fused 512 1 L10C7M3' (the layouts run-length
        coded); without the layouts when the whole would not fit `room` bytes."""
        words = [str(v) for v in (self.name, self.batch_size, self.points_per_call) if v is not None]
        whole = " ".join(words + ([_runs(self.layouts)] if self.layouts else []))
        if room is not None and len(whole.encode()) > room and self.layouts:
            return replace(self, layouts="").text(room)
        return whole

    @classmethod
    def parse(cls, text: str | None) -> Pick | None:
        """The pick a file kept; None for an empty, unknown or damaged one (then a resume probes again)."""
        name, *rest = (text or "").split()[:4] or [""]
        layouts = rest.pop() if rest and not rest[-1].isdigit() else ""
        if name not in STRATEGIES or len(rest) > 2 or not all(n.isdigit() and int(n) > 0 for n in rest):
            return None
        if layouts and not re.fullmatch(r"([A-Z][0-9]*)+", layouts):
            return None
        sizes = [int(n) for n in rest] + [None, None]
        return cls(
            name, sizes[0], sizes[1], "".join(c * int(n or 1) for c, n in re.findall(r"([A-Z])([0-9]*)", layouts))
        )

    def describe(self) -> str:
        sizes = [f"batch size {self.batch_size}"] if self.batch_size else []
        sizes += [f"{self.points_per_call} points per call"] if (self.points_per_call or 1) > 1 else []
        sizes += [f"convolution layouts {_runs(self.layouts)}"] if self.layouts else []
        return self.name + (f" ({', '.join(sizes)})" if sizes else "")


def _runs(letters: str) -> str:
    """'LLLC' as 'L3C': each run of a letter, its length after it when over 1."""
    return "".join(
        m.group(1) + (str(len(m.group(0))) if len(m.group(0)) > 1 else "") for m in re.finditer(r"([A-Z])\1*", letters)
    )


def pick_to_resume(strategy: str, earlier: Pick | None, batch_size: int | None = None) -> Pick | None:
    """The earlier run's pick when this run asks for auto or for the same strategy, else None; a
    batch size the user names now wins over the stored one (the points per call are then sized again)."""
    if earlier is None or strategy not in ("auto", earlier.name):
        return None
    if batch_size is not None and batch_size != earlier.batch_size:  # layouts timed at the old size are timed again
        return Pick(earlier.name, batch_size)
    return earlier
