"""Sharding is a pure, cost-balanced function of the unit list and the world size (issue 12)."""

import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from stitchkit.experiments.distributed import shard, world_from_env

costs = st.lists(st.floats(min_value=0.01, max_value=50.0, allow_nan=False), min_size=0, max_size=60)


@given(costs, st.integers(min_value=1, max_value=9))
@settings(max_examples=200, deadline=None)
def test_every_unit_once_in_order_and_balanced(unit_costs, world_size):
    units = list(range(len(unit_costs)))
    shards = shard(units, lambda u: unit_costs[u], world_size)
    assert len(shards) == world_size
    assert sorted(u for s in shards for u in s) == units  # each unit exactly once
    assert all(s == sorted(s) for s in shards)  # each rank keeps the experiment's order
    loads = [sum(unit_costs[u] for u in s) for s in shards]
    if unit_costs:
        # LPT's guarantee: the most loaded rank is within one unit of the mean.
        assert max(loads) <= sum(unit_costs) / world_size + max(unit_costs) + 1e-9


def test_costly_units_are_spread_not_dealt_in_turn():
    # Round-robin would give rank 0 every large-only unit (cost 6) of this interleaved list.
    units = [("large", i) if i % 2 == 0 else ("small", i) for i in range(8)]
    cost = {"large": 6.0, "small": 1.0}
    shards = shard(units, lambda u: cost[u[0]], 2)
    assert [sum(1 for m, _ in s if m == "large") for s in shards] == [2, 2]


def test_same_split_in_another_process():
    code = ("from stitchkit.experiments.distributed import shard;"
            "print(shard(list(range(40)), lambda u: (u * 7919) % 13 + 0.5, 3))")
    here = shard(list(range(40)), lambda u: (u * 7919) % 13 + 0.5, 3)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == str(here)


def test_plain_process_has_no_world():
    assert world_from_env({}) is None
    assert world_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    world = world_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert (world.rank, world.world_size, world.local_rank, world.is_main, world.is_local_main) == (3, 4, 1, False, False)
    assert world.device("cuda") == "cuda:1" and world.device("cpu") == "cpu"
