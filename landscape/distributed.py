"""torch.distributed for runs launched by torchrun; a World of size 1 makes every call a no-op.

Only what the commands need: who am I (rank, size), broadcast from rank 0, gather to rank 0,
sum across ranks. gloo on CPU, NCCL on CUDA. The World is passed explicitly, never global.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist

from landscape.errors import RunFailure, one_line

if TYPE_CHECKING:
    from landscape.problem import Problem

TIMEOUT_S = 600.0  # how long a rank waits for the others at a collective (gloo's own default is 30 min)
FAILED_KEY = "landscape/failed/"  # + rank: a failing rank's one-line error, for the others to report
EXCHANGES_KEY = "landscape/exchanges/"  # + rank: how many collectives the rank has entered
STORE_GRACE_S = 2.0  # how long a failing rank waits for the store (its host may be gone)

T = TypeVar("T")


class PeersLost(RunFailure):
    """Another rank failed or stopped answering: this rank cannot go on."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank 0 of 1 unless launched by torchrun. `store` is the
    process group's key-value store, where a failing rank leaves its error for the others."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: float = TIMEOUT_S
    store: Any = field(default=None, compare=False, repr=False)

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes files and prints progress."""
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (any picklable object; tensors come back on the CPU)."""
        if self.size == 1:
            return obj
        box = [obj if self.main else None]
        self._collective(lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` as a list on rank 0 (None elsewhere)."""
        if self.size == 1:
            return [obj]
        out: list[Any] | None = [None] * self.size if self.main else None
        self._collective(lambda: dist.gather_object(obj, out, dst=0))
        return out

    def all_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks in place (e.g. HVPs of data shards)."""
        if self.size > 1:
            self._collective(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
        return tensor

    def _collective(self, call: Callable[[], T]) -> T:
        """`call()`; when the other ranks do not take part (one failed, died, or stalled past the
        timeout) a PeersLost that says which and why, instead of the backend's error or a hang.
        Each rank counts its exchanges in the store, so the ones that never came can be named."""
        self._count(1)
        try:
            return call()
        except RuntimeError as exc:  # gloo and NCCL raise DistBackendError (a RuntimeError) on timeouts and lost peers
            self.store_gives_up_soon()
            failed = self.peer_failures()
            if failed:
                raise PeersLost("stopped because " + "; ".join(failed)) from exc
            mine = self._count(0)
            behind = [r for r in range(self.size) if r != self.rank and self._count(0, r) < mine]
            who = ", ".join(f"rank {r}" for r in behind) or "another process"
            how = "" if "timed out" in str(exc).lower() else f" ({one_line(exc)})"
            raise PeersLost(
                f"{who} stopped answering: it did not reach exchange {mine} of the run within --dist-timeout "
                f"{self.timeout_s:g} s (stalled or died){how}"
            ) from exc

    def _count(self, add: int, rank: int | None = None) -> int:
        """Add to a rank's count of exchanges in the store and return it (-1 without a store)."""
        if self.store is None:
            return -1
        try:
            return int(self.store.add(f"{EXCHANGES_KEY}{self.rank if rank is None else rank}", add))
        except Exception:  # the store's host is gone
            return -1

    def store_gives_up_soon(self) -> None:
        """Once the run is failing, the store is asked with a short timeout: when the launcher that
        hosts it was killed, each request could otherwise wait the whole --dist-timeout."""
        if self.store is not None:
            try:
                self.store.set_timeout(dt.timedelta(seconds=STORE_GRACE_S))
            except Exception:
                pass

    def post_failure(self, message: str) -> None:
        """Leave this rank's one-line error in the store, where the others read it (best effort)."""
        if self.store is None:
            return
        try:
            self.store.set(f"{FAILED_KEY}{self.rank}", message)
        except Exception:  # the store's host (the launcher) may be gone already
            pass

    def peer_failures(self) -> list[str]:
        """The errors other ranks left in the store, as 'rank N failed: ...' (without waiting)."""
        if self.store is None:
            return []
        found = []
        for rank in range(self.size):
            key = f"{FAILED_KEY}{rank}"
            try:
                if rank != self.rank and self.store.check([key]):
                    found.append(f"rank {rank} failed: {self.store.get(key).decode(errors='replace')}")
            except Exception:  # the store is gone: nothing more to learn
                break
        return found

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (sizes differ by at most one)."""
        per, extra = divmod(n, self.size)
        start = self.rank * per + min(self.rank, extra)
        return slice(start, start + per + (1 if self.rank < extra else 0))


def shard_problem(world: World, problem: Problem) -> Problem:
    """This rank's contiguous share of the problem's data (`World.shard` rows of x and y, copied so the
    rest can be freed); the problem itself when the world has one rank.

    The shard's own batch weights are |b|/n_local: code that needs the dataset mean (the curvature
    operator) must weight by the global N, which it gets by summing `problem.terms` over the ranks.
    """
    if world.size == 1:
        return problem
    from landscape.errors import LandscapeError

    if problem.n < world.size:
        raise LandscapeError(
            f"{problem.n} samples cannot be shared by {world.size} processes (use more samples or fewer processes)"
        )
    part = world.shard(problem.n)
    if problem.source is not None:  # streamed: the share is a view of the data set's indices
        return problem.replace(source=problem.source.shard(part))
    from landscape.model_io import map_inputs

    return problem.replace(x=map_inputs(lambda t: t[part].clone(), problem.x), y=problem.y[part].clone())


def init_world(device: str = "auto", timeout_s: float = TIMEOUT_S) -> World:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK);
    every collective (and the joining itself) gives up after `timeout_s` instead of waiting on a
    stalled rank for gloo's 30 minutes."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(timeout_s=timeout_s)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    timeout = dt.timedelta(seconds=timeout_s)
    if use_cuda:
        torch.cuda.set_device(local)
    try:
        store, rank, size = next(dist.rendezvous("env://", rank, size, timeout=timeout))
        store.set_timeout(timeout)
        if not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if use_cuda else "gloo",
                store=dist.PrefixStore("default_pg", store),
                rank=rank,
                world_size=size,
                timeout=timeout,
            )
    except RuntimeError as exc:  # a rank that never came, an address no one listens on
        raise PeersLost(
            f"the {size} processes did not all start within {timeout_s:g} s (--dist-timeout): {one_line(exc)}"
        ) from exc
    return World(rank=rank, size=size, local_rank=local, timeout_s=timeout_s, store=store)


def device_for(world: World, device: str) -> str:
    """The device name this rank uses: under torchrun, `cuda` and `auto` mean cuda:LOCAL_RANK."""
    if world.size > 1 and (device == "cuda" or (device == "auto" and torch.cuda.is_available())):
        return f"cuda:{world.local_rank}"
    return device


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
