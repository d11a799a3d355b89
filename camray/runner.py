"""Builds and runs the Ray Data pipeline for one `JobConfig`: list, skip done work, read+decode (CPU
tasks), predict (actor pool, GPU where present), write with a commit, record the run."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from camray.cam.methods import resolve_method
from camray.config import JobConfig
from camray.host_memory import ALLOCATOR_ENV
from camray.image.decode import DecodeLimits
from camray.io.lease import OutputLease
from camray.io.listing import LISTING, iter_listing
from camray.io.resume import PriorWork, RunState, find_resumable, prior_work, write_state
from camray.io.s3 import store_failure
from camray.io.schema import RUNS, SCHEMA_VERSION
from camray.io.sink import CamDatasink, check_each_input_once, commit
from camray.io.sources import S3Settings, filesystem_for, join_uri, store_errors
from camray.models import get_spec, load_model, resolve_layer
from camray.predictor import Predictor, decode_side, uses_refine_layer
from camray.reader import read_decode_listing
from camray.samples import export_samples

logger = logging.getLogger(__name__)

SAMPLES_URI = "samples"
SAMPLES_FOLDER = "data/samples"


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler's first word) reached the driver: stop, keep the work done, record `interrupted`.

    A KeyboardInterrupt, so that Ray Data shuts its execution down as for Ctrl-C rather than wrapping it."""


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
    attempt: int = 1
    resumed: int = 0
    processed: int = 0
    message: str | None = None
    stats_uri: str | None = None
    errors_by_stage: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        """Inputs this attempt accounted for, per second of its wall time."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Resources:
    batch_size: int
    num_actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    cpu_threads: int
    block_bytes: int
    object_store_bytes: int


# On CPU nodes, the share of logical CPUs the predictor actors reserve; the rest is left to read+decode tasks,
# which Ray would otherwise have no room to schedule.
ACTOR_CPU_SHARE = 0.75
# Bytes of one result row in the object store (maps, boxes, mask), rounded up: what a write task's input holds.
RESULT_ROW_BYTES = 32 << 10
# Predictor batches of canvases per actor that Ray Data may hold ahead in the object store.
BATCHES_AHEAD = 8
MIN_OBJECT_STORE_BYTES = 256 << 20

# CPUs reserved per Parquet write task. Ray Data's default (1) finds no room beside a full actor pool on a
# small node, so every write would wait for the end of the run and the output pile up in the object store.
WRITE_CPUS = 0.25


def plan_resources(
    config: JobConfig, cluster: dict[str, float], images: int | None = None, canvas_side: int = 224
) -> Resources:
    """Batch size, pool size, threads, reservations and memory, chosen together from the cluster unless configured.

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
    return Resources(
        batch_size, num_actors, gpus_per_actor, cpus_per_actor, cpu_threads, block_bytes, object_store_bytes
    )


def validate_before_work(config: JobConfig) -> None:
    """Fails fast on a model/method combination that cannot run, before listing or starting Ray."""
    model = config.model
    spec = get_spec(model.name, model.target_layer, model.classifier_layer, model.input_size)
    resolve_method(spec, config.cam.method)
    # `cam.refine` alone keeps the plain maps of a model with no finer block (one token grid throughout, a ViT);
    # the tiled modes that fuse that block's activation cannot run without it.
    tiling = config.tiling
    tiling_needs_layer = tiling.enabled and (tiling.fusion == "layer" or tiling.whole_image_above_area is not None)
    if tiling_needs_layer and not (config.cam.refine_layer or spec.refine_layer):
        raise ValueError(
            "`tiling.fusion` `layer` and `tiling.whole_image_above_area` need `cam.refine_layer` for "
            f"{config.model.name!r}: the module path of a block at twice the resolution of the target layer "
            "(e.g. `layer3` for a ResNet)"
        )


def _completed_runs(output_uri: str, s3: S3Settings) -> list[str]:
    fs, base = filesystem_for(join_uri(output_uri, "runs"), s3)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    runs = pads.dataset(base, filesystem=fs, format="parquet").to_table(columns=["run_id", "status"])
    return [run for run, status in zip(*runs.to_pydict().values(), strict=True) if status == "succeeded"]


def _done_versions(config: JobConfig, s3: S3Settings, completed: list[str]) -> pa.Table | None:
    """(image_uri, source_version) of every result of a completed run with this model and these settings."""
    fs, base = filesystem_for(join_uri(config.sink.uri, "results"), s3)
    if not config.sink.incremental or not completed or fs.get_file_info(base).type != pafs.FileType.Directory:
        return None
    return (
        pads.dataset(base, filesystem=fs, format="parquet")
        .filter(
            pads.field("run_id").isin(completed)
            & (pads.field("model") == config.model.name)
            & (pads.field("config_fingerprint") == config.fingerprint())
        )
        .to_table(columns=["image_uri", "source_version"])
    )


def skip_done(chunk: pa.Table, done: pa.Table | None, prior: PriorWork | None) -> pa.Table:
    """A listing chunk without the inputs that are done: same version already annotated by a completed run with
    these settings, or held by an earlier attempt of this run (by URI)."""
    if done is not None and done.num_rows:
        # A manifest gives no version: without one, "same file" cannot be told, so it is always processed.
        has_version = pc.not_equal(chunk.column("version"), "")
        versioned = chunk.filter(has_version).join(
            done, keys=["uri", "version"], right_keys=["image_uri", "source_version"], join_type="left anti"
        )
        chunk = pa.concat_tables([versioned.select(LISTING.names), chunk.filter(pc.invert(has_version))])
    if prior is not None and len(prior.inputs):
        chunk = chunk.filter(pc.invert(pc.is_in(chunk.column("uri"), value_set=prior.inputs)))
    return chunk


@dataclass
class _StagedListing:
    """The inputs to process, written as Parquet under `_listing/` for the read tasks; removed when the attempt
    ends (a crashed attempt's is debris that the next attempt, writing its own, does not read)."""

    uri: str
    files: int = 0
    rows: int = 0


def _stage_listing(
    config: JobConfig, s3: S3Settings, state: _Attempt, source_uri: str, completed: list[str]
) -> _StagedListing:
    """Streams the listing through the skip rules into Parquet files, holding one chunk at a time.

    File sizes grow: the first files hold one read batch each, so that a small run still spreads over the
    cluster; later ones up to `LISTING_FILE_ROWS`, so that millions of inputs make hundreds of files, not
    tens of thousands. Each file becomes one read+decode task."""
    staged = _StagedListing(join_uri(config.sink.uri, "_listing", f"{state.run_id}-a{state.attempt:02d}"))
    fs, base = filesystem_for(staged.uri, s3)
    fs.create_dir(base, recursive=True)
    done = _done_versions(config, s3, completed)
    small = config.runtime.decode_batch_size
    pending: list[pa.Table] = []
    pending_rows = 0

    def flush(final: bool) -> None:
        nonlocal pending, pending_rows
        while pending_rows and (final or pending_rows >= _listing_file_rows(staged.files, small)):
            table = pa.concat_tables(pending)
            size = _listing_file_rows(staged.files, small)
            pq.write_table(table.slice(0, size), f"{base}/part-{staged.files:05d}.parquet", filesystem=fs)
            staged.files += 1
            staged.rows += min(size, table.num_rows)
            rest = table.slice(size)
            pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    limit = config.source.limit
    for chunk in iter_listing(source_uri, config.source.extensions, config.source.recursive, s3):
        if limit is not None:
            chunk = chunk.slice(0, max(0, limit - state.listed))
        state.listed += chunk.num_rows
        kept = skip_done(chunk, done, None)
        state.skipped += chunk.num_rows - kept.num_rows
        kept = skip_done(kept, None, state.prior)
        if kept.num_rows:
            pending.append(kept)
            pending_rows += kept.num_rows
            flush(final=False)
        if limit is not None and state.listed >= limit:
            break
    flush(final=True)
    return staged


# Rows of the listing files after the first `FINE_LISTING_FILES`, each of one read batch.
LISTING_FILE_ROWS = 4096
FINE_LISTING_FILES = 64


def _listing_file_rows(index: int, read_batch: int) -> int:
    return read_batch if index < FINE_LISTING_FILES else max(read_batch, LISTING_FILE_ROWS)


def _camray_version() -> tuple[str, str | None]:
    """The package version, and the git commit where the code runs from a checkout."""
    repo = Path(__file__).resolve().parents[1]
    try:
        version = metadata.version("camray")
    except metadata.PackageNotFoundError:  # submitted with `--working-dir` to a cluster that lacks the package
        text = (repo / "pyproject.toml").read_text() if (repo / "pyproject.toml").exists() else ""
        version = next((line.split('"')[1] for line in text.splitlines() if line.startswith("version")), "unknown")
    commit = None
    if (repo / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = None
    return version, commit


def _cluster_facts() -> tuple[int, str]:
    """Alive nodes and their GPU types (Ray's `accelerator_type:*` resources), for the runs row."""
    if not ray.is_initialized():
        return 0, ""
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    gpus = sorted(
        {
            key.split(":", 1)[1]
            for node in nodes
            for key in node.get("Resources", {})
            if key.startswith("accelerator_type:")
        }
    )
    return len(nodes), ",".join(gpus)


def _write_text(uri: str, text: str, s3: S3Settings) -> None:
    fs, path = filesystem_for(uri, s3)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def _discard_listing(config: JobConfig, s3: S3Settings, state: _Attempt) -> None:
    uri = join_uri(config.sink.uri, "_listing", f"{state.run_id}-a{state.attempt:02d}")
    try:
        fs, path = filesystem_for(uri, s3)
        fs.delete_dir_contents(path, missing_dir_ok=True)
        if isinstance(fs, pafs.LocalFileSystem):
            fs.delete_dir(path)
    except OSError as exc:  # the store may be what failed the run; a leftover listing harms no reader
        logger.warning("run %s: could not remove its listing %s: %s", state.run_id, uri, exc)


def _write_run_row(config: JobConfig, s3: S3Settings, row: dict) -> None:
    name = f"{row['run_id']}.parquet" if row["attempt"] == 1 else f"{row['run_id']}-a{row['attempt']:02d}.parquet"
    try:
        with store_errors("write of the runs row to", config.sink.uri, s3):
            fs, base = filesystem_for(join_uri(config.sink.uri, "runs"), s3)
            fs.create_dir(base, recursive=True)
            pq.write_table(pa.Table.from_pylist([row], schema=RUNS), f"{base}/{name}", filesystem=fs)
    except OSError:
        if row["status"] == "succeeded":
            raise  # without its row the run is not complete to readers; the error says why
        # The store may be what failed the run: its own error, raised after this, is the one to report.
        logger.exception("run %s: could not record its %s status in runs/", row["run_id"], row["status"])


def _ensure_ray(config: JobConfig) -> None:
    if ray.is_initialized():
        return
    address = config.runtime.ray_address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)


def _interrupt(signum: int, _frame: object) -> None:
    raise RunInterrupted(f"received signal {signal.Signals(signum).name}")


def _take_sigterm() -> None:
    """Makes SIGTERM raise `RunInterrupted` in the driver's main thread (handlers can only live there).

    Called again once Ray is connected: `ray.init` installs its own handlers (Python's exits at once, skipping
    the runs row and leaving the lease to expire; its core worker's logs and aborts the process)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    _take_sigterm()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class _Attempt:
    """What one invocation of `run_job` knows about its run as it goes, for the runs row."""

    run_id: str
    attempt: int = 1
    listed: int = 0
    skipped: int = 0
    to_process: int = 0
    prior: PriorWork | None = None
    weights_source: str | None = None
    weights_sha256: str | None = None
    stats_uri: str | None = None
    message: str | None = None
    files: list[str] = field(default_factory=list)
    nodes: int = 0
    gpu_types: str = ""


def run_job(config: JobConfig) -> RunSummary:
    """Runs one job under the output's lease and returns its summary.

    Raises `LeaseHeld` when another run holds the output, `ValueError` on setup errors and the underlying error
    when the run fails; `RunInterrupted` on SIGTERM. Every run that took the lease leaves its runs row."""
    validate_before_work(config)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    # Resolve the endpoint here and pass it on explicitly: workers on other nodes may not share our env.
    s3 = S3Settings(
        S3Settings(config.source.s3_endpoint_url).resolved_endpoint(),
        config.source.s3_region,
        config.source.s3_max_attempts,
    )
    state = _Attempt(run_id=f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}")
    lease = OutputLease(config.sink.uri, state.run_id, s3, config.sink.lease_seconds)
    lease.acquire(wait_seconds=config.sink.wait_for_lease)
    sink = CamDatasink(config.sink.uri, state.run_id, s3, config.sink.rows_per_file)
    status = "failed"
    try:
        with _sigterm_interrupts():
            status = _run_leased(config, s3, lease, state, sink, started)
    except RunInterrupted as exc:
        status, state.message = "interrupted", f"interrupted: {exc}; the work done so far is kept for the next run"
        logger.warning("run %s %s", state.run_id, state.message)
        raise
    except BaseException as exc:
        outage = store_failure(exc)
        status, state.message = "failed", str(outage) if outage is not None else f"{type(exc).__name__}: {exc}"
        if outage is not None and outage is not exc:  # a task's outage arrives wrapped in Ray's traceback
            raise outage from exc
        raise
    finally:
        _discard_listing(config, s3, state)
        counts = sink.counts
        logger.info(
            "run %s: %d S3 retries (read %d, write %d)",
            state.run_id,
            counts.io_retries,
            counts.read_retries,
            counts.write_retries,
        )
        try:
            seconds = time.perf_counter() - clock
            summary = _summary(config, state, sink, status, seconds)
            _record_run(config, s3, state, sink, summary, started)
        finally:
            lease.release()
    return summary


def _run_leased(
    config: JobConfig, s3: S3Settings, lease: OutputLease, state: _Attempt, sink: CamDatasink, started: datetime
) -> str:
    """The run's work once the output is leased; returns its status."""
    # Load the model once here: bad weights or layers fail before any work, and the run records provenance.
    loaded = load_model(config.model, s3)
    if uses_refine_layer(config.cam, config.tiling) and config.cam.refine_layer:
        resolve_layer(loaded.module, config.cam.refine_layer, "cam.refine_layer")
    state.weights_source, state.weights_sha256 = loaded.weights_source, loaded.weights_sha256
    input_size = config.model.input_size or loaded.spec.input_size
    del loaded

    with store_errors("reading of the done work in", config.sink.uri, s3):
        completed = _completed_runs(config.sink.uri, s3)
    fingerprint = config.fingerprint()
    resumable = (
        find_resumable(config.sink.uri, fingerprint, config.model.name, config.source.uri, set(completed), s3)
        if config.sink.resume
        else None
    )
    if resumable is not None:
        state.run_id, state.attempt = resumable.run_id, resumable.attempt + 1
        lease.relabel(state.run_id)
        sink.run_id, sink.attempt = state.run_id, state.attempt
        state.prior = prior_work(config.sink.uri, state.run_id, s3)
        logger.warning(
            "resuming run %s (attempt %d): %d inputs already done by earlier attempts",
            state.run_id,
            state.attempt,
            len(state.prior.inputs),
        )
    write_state(
        config.sink.uri,
        RunState(
            state.run_id,
            state.attempt,
            fingerprint,
            config.model.name,
            config.source.uri,
            resumable.started_at if resumable else started.isoformat(),
        ),
        s3,
    )

    source_uri = config.source.uri
    if source_uri == SAMPLES_URI:
        source_uri = str(export_samples(SAMPLES_FOLDER).resolve())
    with store_errors("listing of", source_uri, s3):
        staged = _stage_listing(config, s3, state, source_uri, completed)
    state.to_process = staged.rows
    logger.info(
        "run %s: %d listed, %d already done, %d done by earlier attempts, %d to process",
        state.run_id,
        state.listed,
        state.skipped,
        len(state.prior.inputs) if state.prior else 0,
        state.to_process,
    )

    _ensure_ray(config)
    _take_sigterm()
    # Read now: after a failure the cluster may be gone, and asking it then would hang the runs row.
    state.nodes, state.gpu_types = _cluster_facts()
    resources = plan_resources(config, ray.cluster_resources(), staged.rows, decode_side(config.tiling, input_size))
    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = config.runtime.max_errored_blocks
    context.target_max_block_size = resources.block_bytes
    context.execution_options.resource_limits = context.execution_options.resource_limits.copy(
        object_store_memory=resources.object_store_bytes
    )
    logger.info(
        "run %s: %d predictor actors, batches of %d, blocks up to %.0f MiB, object store budget %.0f MiB",
        state.run_id,
        resources.num_actors,
        resources.batch_size,
        resources.block_bytes / 2**20,
        resources.object_store_bytes / 2**20,
    )

    if staged.rows:
        ds = _plan(config, state.run_id, staged, input_size, s3, resources)
        ds.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_CPUS})
        # Ray Data's per-operator statistics run to hundreds of lines: a file beside the output, linked from the
        # runs row, rather than the terminal.
        state.stats_uri = join_uri(config.sink.uri, "_logs", f"{state.run_id}-a{state.attempt:02d}-stats.txt")
        _write_text(state.stats_uri, ds.stats(), s3)
    accounted = sink.counts.results + sink.counts.errors
    if accounted != state.to_process:
        state.message = (
            f"accounted for {accounted} of {state.to_process} inputs (blocks dropped under "
            "`runtime.max_errored_blocks`); the staged work is kept and the next run finishes the rest"
        )
        logger.error("run %s %s", state.run_id, state.message)
        return "incomplete"
    lease.check()
    check_each_input_once(config.sink.uri, state.run_id, s3)
    state.files = commit(config.sink.uri, state.run_id, s3)
    return "succeeded"


def _plan(
    config: JobConfig, run_id: str, staged: _StagedListing, input_size: int, s3: S3Settings, resources: Resources
) -> ray.data.Dataset:
    s3_plain = dataclasses.asdict(s3)  # workers rebuild S3Settings from plain data
    # One item per listing file, read by the read+decode tasks themselves. Ray Data's `read_parquet` would add
    # a file-listing task wanting a whole CPU, which a full actor pool never leaves free: the run stalled.
    listing_files = [join_uri(staged.uri, f"part-{index:05d}.parquet") for index in range(staged.files)]
    ds = ray.data.from_items([{"listing": uri} for uri in listing_files], override_num_blocks=staged.files)
    ds = ds.map_batches(
        read_decode_listing,
        batch_size=1,
        fn_kwargs={
            "listing_batch": config.runtime.decode_batch_size,
            "input_size": decode_side(config.tiling, input_size),
            "policy": config.model.resize,
            "s3": s3_plain,
            "limits": DecodeLimits().__dict__,
            "decode": config.runtime.decode,
        },
        num_cpus=config.runtime.decode_cpus,
    )
    return ds.map_batches(
        Predictor,
        batch_size=resources.batch_size,
        # The whole pool from the start: grown on demand, a new actor waits for CPUs that read+decode tasks,
        # running ahead, keep taking; measured, a job then ran on one actor of two.
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


def _summary(config: JobConfig, state: _Attempt, sink: CamDatasink, status: str, seconds: float) -> RunSummary:
    prior_results = state.prior.results if state.prior else 0
    prior_errors = state.prior.errors if state.prior else 0
    return RunSummary(
        run_id=state.run_id,
        status=status,
        listed=state.listed,
        skipped=state.skipped,
        results=sink.counts.results + prior_results,
        errors=sink.counts.errors + prior_errors,
        seconds=seconds,
        output_uri=config.sink.uri,
        result_files=tuple(join_uri(config.sink.uri, f) for f in state.files if f.startswith("results/")),
        attempt=state.attempt,
        resumed=prior_results + prior_errors,
        processed=sink.counts.results + sink.counts.errors,
        message=state.message,
        stats_uri=state.stats_uri,
        errors_by_stage=dict(sink.counts.errors_by_stage + (state.prior.errors_by_stage if state.prior else Counter())),
    )


def _record_run(
    config: JobConfig, s3: S3Settings, state: _Attempt, sink: CamDatasink, summary: RunSummary, started: datetime
) -> None:
    import torch

    version, commit_sha = _camray_version()
    _write_run_row(
        config,
        s3,
        {
            "run_id": summary.run_id,
            "status": summary.status,
            "started_at": started,
            "finished_at": datetime.now(UTC),
            "config_fingerprint": config.fingerprint(),
            "config_json": json.dumps(config.model_dump(mode="json"), sort_keys=True),
            "model": config.model.name,
            "weights_source": state.weights_source,
            "weights_sha256": state.weights_sha256,
            "input_uri": config.source.uri,
            "listed": summary.listed,
            "skipped": summary.skipped,
            "results": summary.results,
            "errors": summary.errors,
            "seconds": summary.seconds,
            "schema_version": SCHEMA_VERSION,
            "attempt": summary.attempt,
            "message": summary.message,
            "resumed": summary.resumed,
            "images_per_second": summary.images_per_second,
            "errors_by_stage": json.dumps(dict(sorted(summary.errors_by_stage.items()))),
            "io_retries": sink.counts.io_retries,
            "camray_version": version,
            "git_commit": commit_sha,
            "ray_version": ray.__version__,
            "torch_version": torch.__version__,
            "nodes": state.nodes,
            "gpu_types": state.gpu_types,
            "host": socket.gethostname(),
            "stats_uri": summary.stats_uri,
        },
    )
