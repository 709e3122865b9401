"""Data-parallel experiments on torch.distributed: which process runs which units.

stitchkit writes no launcher, queue or scheduler of its own. ``torchrun`` and ``accelerate launch`` start
the processes and set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and ``LOCAL_WORLD_SIZE``); this module
reads them, joins the process group, and splits the experiment's units between the ranks:

* :func:`shard` is a pure function of the unit list, each unit's cost and the world size. It does not
  look at which units are already done, so a rerun with another world size gives every unit to exactly
  one rank again, and each rank simply skips what is on disk (resume stays per unit).
* It balances by cost (longest-processing-time first, ties broken by position and rank): a large-only
  unit costs several small-only ones, and dealing units round-robin would hand one rank all of them.

A plain ``stitchkit run`` (no launcher variables) never initialises torch.distributed.
"""

from __future__ import annotations

import datetime
import heapq
import os
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

import attrs

K = TypeVar("K")

#: How long a collective may wait for the slowest rank. The final barrier waits for the rank with the
#: most work left; a dead rank is caught sooner by the launcher, which stops the whole job.
DEFAULT_TIMEOUT = datetime.timedelta(hours=6)


@attrs.frozen(kw_only=True)
class World:
    """This process's place in the job, as the launcher described it."""

    rank: int
    world_size: int
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes what the whole job shares: results, trace.jsonl, pictures."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """Local rank 0 measures what one node shares (the latency profile of its GPU type)."""
        return self.local_rank == 0

    def device(self, requested: str) -> str:
        """``cuda`` becomes this process's own GPU, ``cuda:LOCAL_RANK``; anything else is kept."""
        return f"cuda:{self.local_rank}" if requested == "cuda" else requested


def world_from_env(environ: Mapping[str, str] | None = None) -> World | None:
    """The job described by the launcher's variables, or ``None`` for a plain single process."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    world = World(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                  local_rank=int(env.get("LOCAL_RANK", 0)), local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)))
    return world if world.world_size > 1 else None


@contextmanager
def process_group(world: World | None, *, use_cuda: bool) -> Iterator[World | None]:
    """Join the launcher's process group for the ``with`` block (NCCL on GPUs, gloo on CPUs)."""
    if world is None:
        yield None
        return
    import torch
    import torch.distributed as dist

    if use_cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=DEFAULT_TIMEOUT)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def barrier(world: World | None) -> None:
    """Wait for every rank (no-op in a single process)."""
    if world is not None:
        import torch.distributed as dist

        dist.barrier()


def broadcast(world: World | None, value):
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if world is None:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(world: World | None, value) -> list:
    """Every rank's ``value``, in rank order, on every rank."""
    if world is None:
        return [value]
    import torch.distributed as dist

    out: list = [None] * world.world_size
    dist.all_gather_object(out, value)
    return out


def shard(units: Sequence[K], cost: Callable[[K], float], world_size: int) -> list[list[K]]:
    """Split ``units`` into ``world_size`` lists of about equal total ``cost``, each in the input order.

    Longest processing time first: units by decreasing cost (ties: earlier first) each go to the rank with
    the least work so far (ties: the lowest rank). The most loaded rank ends within one unit's cost of the
    mean, and the split depends only on the arguments, never on the machine or on what is done.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    costs = [float(cost(u)) for u in units]
    order = sorted(range(len(units)), key=lambda i: (-costs[i], i))
    heap = [(0.0, rank) for rank in range(world_size)]
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        load, rank = heapq.heappop(heap)
        owned[rank].append(i)
        heapq.heappush(heap, (load + costs[i], rank))
    return [[units[i] for i in sorted(indices)] for indices in owned]
