"""torch.distributed for runs launched by torchrun; a World of size 1 makes every call a no-op.

Only what the commands need: who am I (rank, size), broadcast from rank 0, gather to rank 0,
sum across ranks. gloo on CPU, NCCL on CUDA. The World is passed explicitly, never global.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from landscape.problem import Problem


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank 0 of 1 unless launched by torchrun."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes files and prints progress."""
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (any picklable object; tensors come back on the CPU)."""
        if self.size == 1:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's `obj` as a list on rank 0 (None elsewhere)."""
        if self.size == 1:
            return [obj]
        out: list[Any] | None = [None] * self.size if self.main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over ranks in place (e.g. HVPs of data shards)."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n items (sizes differ by at most one)."""
        per, extra = divmod(n, self.size)
        start = self.rank * per + min(self.rank, extra)
        return slice(start, start + per + (1 if self.rank < extra else 0))


def shard_problem(world: World, problem: Problem) -> Problem:
    """This rank's contiguous share of the problem's data (`World.shard` rows of x and y, copied so the
    rest can be freed); the problem itself when the world has one rank.

    The shard's own batch weights are |b|/n_local: code that needs the dataset mean (the curvature
    operator) must weight by the global N, which it gets by summing `problem.n` over the ranks.
    """
    if world.size == 1:
        return problem
    from landscape.errors import LandscapeError

    if problem.n < world.size:
        raise LandscapeError(
            f"{problem.n} samples cannot be shared by {world.size} processes (use more samples or fewer processes)"
        )
    part = world.shard(problem.n)
    from landscape.model_io import map_inputs

    return problem.replace(x=map_inputs(lambda t: t[part].clone(), problem.x), y=problem.y[part].clone())


def init_world(device: str = "auto") -> World:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return World(rank=rank, size=size, local_rank=local)


def device_for(world: World, device: str) -> str:
    """The device name this rank uses: under torchrun, `cuda` and `auto` mean cuda:LOCAL_RANK."""
    if world.size > 1 and (device == "cuda" or (device == "auto" and torch.cuda.is_available())):
        return f"cuda:{world.local_rank}"
    return device


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
