"""What a run asks of the cluster, chosen together in one place: batch size, pool size, threads, reservations,
block size and object store budget (`plan_resources`), and the Ray Data settings that carry them
(`configure_data_context`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import ray

from camray.config import JobConfig


@dataclass(frozen=True)
class Resources:
    batch_size: int
    num_actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    cpu_threads: int
    block_bytes: int
    object_store_bytes: int
    decode: str  # `runtime.decode` resolved: `cpu` or `device`
    calls_per_actor: int  # batches an actor holds at once (`GPU_CALLS_PER_ACTOR`)


# On CPU nodes, the share of logical CPUs the predictor actors reserve; the rest is left to read+decode tasks,
# which Ray would otherwise have no room to schedule.
ACTOR_CPU_SHARE = 0.75
# Bytes of one result row in the object store (maps, boxes, mask), rounded up: what a write task's input holds.
RESULT_ROW_BYTES = 32 << 10
# Predictor batches of canvases per actor that Ray Data may hold ahead in the object store.
BATCHES_AHEAD = 8
MIN_OBJECT_STORE_BYTES = 256 << 20

# Batches a GPU actor holds at once, each in a thread of its own: one is loaded onto the device (decoded by nvJPEG,
# or copied up) on a stream of its own while the other is computed, so that loading hides behind the model
# (Ray Data's `max_concurrent_calls_per_actor` with `enable_true_multi_threading`). A CPU actor keeps one: its
# reserved CPU has no room for a second thread.
GPU_CALLS_PER_ACTOR = 2

# CPUs reserved per Parquet write task. Ray Data's default (1) finds no room beside a full actor pool on a
# small node, so every write would wait for the end of the run and the output pile up in the object store.
WRITE_CPUS = 0.25


def plan_resources(
    config: JobConfig, cluster: dict[str, float], images: int | None = None, canvas_side: int = 224
) -> Resources:
    """Batch size, pool size, threads, reservations, memory and where images are decoded, chosen together from the
    cluster unless configured.

    GPU clusters: one actor per GPU, batch 256 (the device benchmark's best), JPEGs decoded on the GPU, two batches
    in hand per actor. CPU clusters: single-threaded actors, one per CPU, batch 16, decoded in the read tasks.
    Many one-thread actors beat one many-thread actor on a shared node: an OpenMP team waits at every
    operator's barrier for its slowest thread, so any other process (decoding, Ray's own) preempting one
    thread stalls them all (measured on 2 CPUs: two 1-thread actors 8% faster than one 2-thread actor).
    """
    runtime = config.runtime
    cpus = max(1.0, cluster.get("CPU", 1.0))
    gpus = cluster.get("GPU", 0.0)
    gpus_per_actor = runtime.gpus_per_actor if runtime.gpus_per_actor is not None else (1.0 if gpus else 0.0)
    cpu_threads = runtime.cpu_threads or 1
    if runtime.num_actors is not None:
        num_actors = runtime.num_actors
    elif gpus_per_actor > 0:
        num_actors = max(1, int(gpus // gpus_per_actor))
    else:
        num_actors = max(1, int(cpus // cpu_threads))
    if runtime.cpus_per_actor is not None:
        cpus_per_actor = runtime.cpus_per_actor
    elif gpus_per_actor > 0:
        cpus_per_actor = 1.0
    else:
        # At least one read+decode task and one write task must fit beside the actors.
        share = min(ACTOR_CPU_SHARE * cpus, cpus - runtime.decode_cpus - WRITE_CPUS)
        cpus_per_actor = max(0.01, round(min(float(cpu_threads), share / num_actors), 3))
        if cpus_per_actor == runtime.decode_cpus:  # equal resources would let Ray Data fuse decoding into the actors
            cpus_per_actor = round(cpus_per_actor * 0.99, 3)
    batch_size = runtime.batch_size or (256 if gpus_per_actor > 0 else 16)
    if images is not None and runtime.num_actors is None:
        # No more actors than batches: an actor with nothing to do still loads a model, and Ray Data releases
        # idle and still-starting actors of a pool whose inputs are all consumed, which is when a run over a
        # handful of images failed once with "The actor is dead because all references to the actor were
        # removed ... cancelled before it started running".
        num_actors = max(1, min(num_actors, math.ceil(images / batch_size)))
    # Ray Data merges what a task yields into blocks of up to 128 MiB by default: a read task over a 4,096-entry
    # listing file handed the predictors blocks of ~850 canvases, held whole by the actor that took one, and the
    # object store filled with them (measured: the two actors' heaps went from 1.2 to 2.0 GB as the large blocks
    # arrived, and a 50,000-image run's store reached 1.9 GB). One read batch a block and a budget for the store
    # that depends on the pool, not on the input, keep memory where it starts.
    canvas_bytes = canvas_side * canvas_side * 3
    block_bytes = max(1 << 20, math.ceil(runtime.decode_batch_size * canvas_bytes * 1.25))
    if runtime.object_store_mib is not None:
        object_store_bytes = runtime.object_store_mib << 20
    else:
        read_ahead = max(MIN_OBJECT_STORE_BYTES, num_actors * BATCHES_AHEAD * batch_size * canvas_bytes)
        object_store_bytes = read_ahead + config.sink.rows_per_file * RESULT_ROW_BYTES
    on_gpu = gpus_per_actor > 0 and config.model.device != "cpu"
    decode = runtime.decode if runtime.decode != "auto" else ("device" if on_gpu else "cpu")
    return Resources(
        batch_size,
        num_actors,
        gpus_per_actor,
        cpus_per_actor,
        cpu_threads,
        block_bytes,
        object_store_bytes,
        decode,
        GPU_CALLS_PER_ACTOR if on_gpu else 1,
    )


def configure_data_context(config: JobConfig, resources: Resources) -> None:
    """Ray Data's settings for this run: how many failed blocks it may drop, and the memory plan."""
    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = config.runtime.max_errored_blocks
    context.target_max_block_size = resources.block_bytes
    context.execution_options.resource_limits = context.execution_options.resource_limits.copy(
        object_store_memory=resources.object_store_bytes
    )
