"""Resource planning: what a job asks of the cluster, by cluster shape and config."""

import pytest

from pipeline.config import load_config
from pipeline.runner import WRITE_CPUS, plan_resources


def _plan(cluster, **overrides):
    return plan_resources(load_config(overrides={"sink.uri": "out", **overrides}), cluster)


def test_gpu_cluster_one_actor_per_gpu_with_large_batches():
    plan = _plan({"CPU": 32.0, "GPU": 4.0})
    assert (plan.num_actors, plan.gpus_per_actor, plan.cpus_per_actor, plan.batch_size) == (4, 1.0, 1.0, 256)


@pytest.mark.parametrize("cpus", [1.0, 2.0, 4.0, 16.0])
def test_cpu_cluster_single_threaded_actors_leave_room_to_decode(cpus):
    plan = _plan({"CPU": cpus})
    assert plan.gpus_per_actor == 0 and plan.cpu_threads == 1 and plan.batch_size == 16
    assert plan.num_actors == int(cpus)
    # The actors never take so much that no read+decode task (0.5 CPU) and write task fit beside them.
    assert plan.num_actors * plan.cpus_per_actor + 0.5 + WRITE_CPUS <= cpus
    assert plan.cpus_per_actor != 0.5  # equal to the decode tasks', Ray Data would fuse the two stages


def test_configured_values_win():
    plan = _plan({"CPU": 16.0}, **{"runtime.cpu_threads": 4, "runtime.num_actors": 2, "runtime.cpus_per_actor": 3.0})
    assert (plan.num_actors, plan.cpu_threads, plan.cpus_per_actor) == (2, 4, 3.0)
    assert _plan({"CPU": 16.0}, **{"runtime.cpu_threads": 4}).num_actors == 4


def test_no_more_actors_than_batches_unless_configured():
    cluster = {"CPU": 8.0}
    assert _plan(cluster).num_actors == 8
    assert _plan(cluster, **{"runtime.batch_size": 4}).num_actors == 8
    assert (
        plan_resources(load_config(overrides={"sink.uri": "out", "runtime.batch_size": 4}), cluster, 6).num_actors == 2
    )
    assert plan_resources(load_config(overrides={"sink.uri": "out"}), cluster, 0).num_actors == 1
    configured = load_config(overrides={"sink.uri": "out", "runtime.num_actors": 5})
    assert plan_resources(configured, cluster, 3).num_actors == 5
