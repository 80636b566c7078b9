"""A sweep strategy as a run used it (name, batch size, points per call), as a results file keeps
it so that --resume computes the same numbers; torch-free, for the readers of results files."""

from __future__ import annotations

from dataclasses import dataclass

from landscape.names import STRATEGIES


@dataclass(frozen=True)
class Pick:
    """A strategy as a run used it: its name, batch size and points per call, all a resumed run
    needs to compute each remaining point as the run would have (the probe picks them by timing)."""

    name: str
    batch_size: int | None = None
    points_per_call: int | None = None

    def text(self) -> str:
        """As a results file keeps it: 'vmap 256 16'."""
        return " ".join(str(v) for v in (self.name, self.batch_size, self.points_per_call) if v is not None)

    @classmethod
    def parse(cls, text: str | None) -> Pick | None:
        """The pick a file kept; None for an empty, unknown or damaged one (then a resume probes again)."""
        name, *numbers = (text or "").split()[:3] or [""]
        if name not in STRATEGIES or not all(n.isdigit() and int(n) > 0 for n in numbers):
            return None
        sizes = [int(n) for n in numbers] + [None, None]
        return cls(name, sizes[0], sizes[1])

    def describe(self) -> str:
        sizes = [f"batch size {self.batch_size}"] if self.batch_size else []
        sizes += [f"{self.points_per_call} points per call"] if (self.points_per_call or 1) > 1 else []
        return self.name + (f" ({', '.join(sizes)})" if sizes else "")


def pick_to_resume(strategy: str, earlier: Pick | None, batch_size: int | None = None) -> Pick | None:
    """The earlier run's pick when this run asks for auto or for the same strategy, else None; a
    batch size the user names now wins over the stored one (the points per call are then sized again)."""
    if earlier is None or strategy not in ("auto", earlier.name):
        return None
    if batch_size is not None and batch_size != earlier.batch_size:
        return Pick(earlier.name, batch_size)
    return earlier
