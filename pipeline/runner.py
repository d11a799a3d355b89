"""Builds and runs the Ray Data pipeline for one `JobConfig`: list, skip done work, read+decode (CPU
tasks), predict (actor pool, GPU where present), write with a commit, record the run."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from pipeline.cam.methods import resolve_method
from pipeline.config import JobConfig
from pipeline.host_memory import ALLOCATOR_ENV
from pipeline.image.decode import DecodeLimits
from pipeline.io.schema import RUNS, SCHEMA_VERSION
from pipeline.io.sink import CamDatasink, commit, discard_staging
from pipeline.io.sources import Listed, S3Settings, filesystem_for, join_uri, list_inputs
from pipeline.models import get_spec, load_model, resolve_layer
from pipeline.predictor import Predictor, decode_side
from pipeline.reader import read_decode_batch
from pipeline.samples import export_samples

logger = logging.getLogger(__name__)

SAMPLES_URI = "samples"
SAMPLES_FOLDER = "data/samples"


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    status: str
    listed: int
    skipped: int
    results: int
    errors: int
    seconds: float
    output_uri: str
    result_files: tuple[str, ...]

    @property
    def images_per_second(self) -> float:
        return (self.results + self.errors) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Resources:
    batch_size: int
    num_actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    cpu_threads: int


# On CPU nodes, the share of logical CPUs the predictor actors reserve; the rest is left to read+decode tasks,
# which Ray would otherwise have no room to schedule.
ACTOR_CPU_SHARE = 0.75
# CPUs reserved per Parquet write task. Ray Data's default (1) finds no room beside a full actor pool on a
# small node, so every write would wait for the end of the run and the output pile up in the object store.
WRITE_CPUS = 0.25


def plan_resources(config: JobConfig, cluster: dict[str, float]) -> Resources:
    """Batch size, pool size, threads and reservations, chosen together from the cluster unless configured.

    GPU clusters: one actor per GPU, batch 256. CPU clusters: single-threaded actors, one per CPU, batch 16.
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
    return Resources(batch_size, num_actors, gpus_per_actor, cpus_per_actor, cpu_threads)


def validate_before_work(config: JobConfig) -> None:
    """Fails fast on a model/method combination that cannot run, before listing or starting Ray."""
    spec = get_spec(config.model.name, config.model.target_layer, config.model.classifier_layer)
    resolve_method(spec, config.cam.method)
    if config.cam.refine and not (config.cam.refine_layer or spec.refine_layer):
        raise ValueError(
            f"`cam.refine` needs `cam.refine_layer` for {config.model.name!r}: the module path of a block at twice "
            "the resolution of the target layer (e.g. `layer3` for a ResNet)"
        )


def _completed_runs(output_uri: str, s3: S3Settings) -> list[str]:
    fs, base = filesystem_for(join_uri(output_uri, "runs"), s3)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    runs = pads.dataset(base, filesystem=fs, format="parquet").to_table(columns=["run_id", "status"])
    return [run for run, status in zip(*runs.to_pydict().values(), strict=True) if status == "succeeded"]


def skip_done(listing: list[Listed], config: JobConfig, s3: S3Settings) -> tuple[list[Listed], int]:
    """Drops inputs whose current version already has a result from a completed run with these settings."""
    if not config.sink.incremental or not listing:
        return listing, 0
    completed = _completed_runs(config.sink.uri, s3)
    fs, base = filesystem_for(join_uri(config.sink.uri, "results"), s3)
    if not completed or fs.get_file_info(base).type != pafs.FileType.Directory:
        return listing, 0
    done = (
        pads.dataset(base, filesystem=fs, format="parquet")
        .filter(
            pads.field("run_id").isin(completed)
            & (pads.field("model") == config.model.name)
            & (pads.field("config_fingerprint") == config.fingerprint())
        )
        .to_table(columns=["image_uri", "source_version"])
    )
    # A manifest gives no version: without one, "same file" cannot be told, so it is always processed.
    versioned = [item for item in listing if item.version]
    todo = pa.table(
        {
            "image_uri": [item.uri for item in versioned],
            "source_version": [item.version for item in versioned],
            "position": list(range(len(versioned))),
        }
    )
    remaining = todo.join(done, keys=["image_uri", "source_version"], join_type="left anti")
    kept = [versioned[i] for i in remaining.column("position").to_pylist()]
    kept += [item for item in listing if not item.version]
    kept.sort(key=lambda item: item.uri)
    return kept, len(listing) - len(kept)


def _write_run_row(config: JobConfig, s3: S3Settings, row: dict) -> None:
    fs, base = filesystem_for(join_uri(config.sink.uri, "runs"), s3)
    fs.create_dir(base, recursive=True)
    pq.write_table(pa.Table.from_pylist([row], schema=RUNS), f"{base}/{row['run_id']}.parquet", filesystem=fs)


def _ensure_ray(config: JobConfig) -> None:
    if ray.is_initialized():
        return
    address = config.runtime.ray_address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)


def run_job(config: JobConfig) -> RunSummary:
    """Runs one job to completion and returns its summary; raises on setup errors and failed writes."""
    validate_before_work(config)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    run_id = f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    # Resolve the endpoint here and pass it on explicitly: workers on other nodes may not share our env.
    s3 = S3Settings(S3Settings(config.source.s3_endpoint_url).resolved_endpoint(), config.source.s3_region)
    # Load the model once here: bad weights or layers fail before any work, and the run records provenance.
    loaded = load_model(config.model, s3)
    if config.cam.refine and config.cam.refine_layer:
        resolve_layer(loaded.module, config.cam.refine_layer, "cam.refine_layer")
    weights_source, weights_sha256 = loaded.weights_source, loaded.weights_sha256
    input_size = config.model.input_size or loaded.spec.input_size
    del loaded
    source_uri = config.source.uri
    if source_uri == SAMPLES_URI:
        source_uri = str(export_samples(SAMPLES_FOLDER).resolve())
    listing = list_inputs(source_uri, config.source.extensions, config.source.recursive, s3)
    if config.source.limit is not None:
        listing = listing[: config.source.limit]
    listed = len(listing)
    listing, skipped = skip_done(listing, config, s3)
    logger.info("run %s: %d listed, %d already done, %d to process", run_id, listed, skipped, len(listing))

    _ensure_ray(config)
    resources = plan_resources(config, ray.cluster_resources())
    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = config.runtime.max_errored_blocks

    s3_plain = dataclasses.asdict(s3)  # workers rebuild S3Settings from plain data
    sink = CamDatasink(config.sink.uri, run_id, s3, config.sink.rows_per_file)
    status = "succeeded"
    try:
        if listing:
            blocks = max(1, min(len(listing), math.ceil(len(listing) / config.runtime.decode_batch_size)))
            ds = ray.data.from_items(
                [{"uri": item.uri, "version": item.version} for item in listing], override_num_blocks=blocks
            )
            ds = ds.map_batches(
                read_decode_batch,
                batch_size=config.runtime.decode_batch_size,
                fn_kwargs={
                    "input_size": decode_side(config.tiling, input_size),
                    "policy": config.model.resize,
                    "s3": s3_plain,
                    "limits": DecodeLimits().__dict__,
                    "decode": config.runtime.decode,
                },
                num_cpus=config.runtime.decode_cpus,
            )
            ds = ds.map_batches(
                Predictor,
                batch_size=resources.batch_size,
                # The whole pool from the start: grown on demand, a new actor waits for CPUs that read+decode
                # tasks, running ahead, keep taking; measured, a job then ran on one actor of two.
                compute=ray.data.ActorPoolStrategy(min_size=resources.num_actors, max_size=resources.num_actors),
                num_gpus=resources.gpus_per_actor,
                num_cpus=resources.cpus_per_actor,
                # Merged into the job's runtime environment by Ray; glibc reads these at process start.
                runtime_env={"env_vars": ALLOCATOR_ENV},
                fn_constructor_kwargs={
                    "config": config.model_dump(mode="json"),
                    "run_id": run_id,
                    "input_size": input_size,
                    "s3": s3_plain,
                    "cpu_threads": resources.cpu_threads,
                },
            )
            ds.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_CPUS})
            logger.info("run %s: Ray Data execution\n%s", run_id, ds.stats())
        commit(config.sink.uri, run_id, sink.counts.files, s3)
    except BaseException:
        status = "failed"
        discard_staging(config.sink.uri, run_id, s3)
        raise
    finally:
        seconds = time.perf_counter() - clock
        accounted = sink.counts.results + sink.counts.errors
        if status == "succeeded" and accounted != len(listing):
            status = "incomplete"  # blocks were dropped under `runtime.max_errored_blocks`
            logger.error("run %s accounted for %d of %d images", run_id, accounted, len(listing))
        _write_run_row(
            config,
            s3,
            {
                "run_id": run_id,
                "status": status,
                "started_at": started,
                "finished_at": datetime.now(UTC),
                "config_fingerprint": config.fingerprint(),
                "config_json": json.dumps(config.model_dump(mode="json"), sort_keys=True),
                "model": config.model.name,
                "weights_source": weights_source,
                "weights_sha256": weights_sha256,
                "input_uri": config.source.uri,
                "listed": listed,
                "skipped": skipped,
                "results": sink.counts.results,
                "errors": sink.counts.errors,
                "seconds": seconds,
                "schema_version": SCHEMA_VERSION,
            },
        )
    return RunSummary(
        run_id,
        status,
        listed,
        skipped,
        sink.counts.results,
        sink.counts.errors,
        seconds,
        config.sink.uri,
        tuple(join_uri(config.sink.uri, f) for f in sink.counts.files if f.startswith("results/")),
    )
