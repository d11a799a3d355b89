"""One run of a `JobConfig`, as a short list of named steps (`run_job`, `_work`):

1. resolve the setup (model, weights and head, class names, layers, CAM method) once, and check that the input is
   there, before anything is touched;
2. open the output once (`camray.io.output.Output`), resolve the attempt and lease the output under its id
   (`camray.io.output_run.OutputRun`);
3. read what earlier attempts of the run left, stage the listing without what is done;
4. start Ray, plan the resources, read+decode (CPU tasks), predict (actor pool, GPU where present), write;
5. account for every input and commit;
6. however it ended: remove the listing, write the runs row, release the lease.

Resources and Ray Data's settings are `camray.planning`'s; the runs row is `camray.provenance`'s; everything done
to the output (where things live, the lease, staging, the commit) is the output's."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa
import ray

from camray.config import JobConfig
from camray.container_reader import container_format, read_stages
from camray.container_runs import input_format, is_container_format, stage_containers
from camray.errors import InputNotFound
from camray.host_memory import ALLOCATOR_ENV
from camray.image.decode import DecodeLimits
from camray.io.container_staging import StagedContainers
from camray.io.containers import brace_folder, is_brace_pattern
from camray.io.done import LABELS_KEY, DoneSet, labels_key, without_done
from camray.io.listing import check_input_exists, iter_listing
from camray.io.output import Output
from camray.io.output_run import OutputRun, StagedListing
from camray.io.resume import PriorWork, RunIdentity
from camray.io.s3 import store_failure
from camray.io.sink import CamDatasink, WrittenCounts
from camray.io.sources import S3Settings, store_errors
from camray.logs import LOG_ONLY, save_run_log
from camray.metrics import push_outcome
from camray.models import LabelResolver, ModelSetup, UnknownLabel, resolve_setup
from camray.planning import WRITE_CPUS, Resources, configure_data_context, plan_resources
from camray.predictor import Predictor, decode_side
from camray.provenance import ClusterFacts, ModelFacts, RunSummary, cluster_facts, runs_row
from camray.reader import read_decode_listing
from camray.samples import export_samples, require_demo_packages

logger = logging.getLogger(__name__)

SAMPLES_URI = "samples"
SAMPLES_FOLDER = "data/samples"


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM (a scheduler's first word) reached the driver: stop, keep the work done, record `interrupted`.

    A KeyboardInterrupt, so that Ray Data shuts its execution down as for Ctrl-C rather than wrapping it."""


def resolve_run_setup(config: JobConfig, s3: S3Settings) -> ModelSetup:
    """The run's setup, resolved once in the driver before the lease, the listing and Ray (`resolve_setup`: the
    model built and measured, its weights loaded and checked against its head and labels); what cannot run is a
    `SetupError` naming the field. The demo's photos are checked here too."""
    if config.source.uri == SAMPLES_URI:
        require_demo_packages()
    return resolve_setup(config.model, config.cam, config.tiling, s3).setup


def identity(config: JobConfig) -> RunIdentity:
    """What an unfinished run must share with this one to be resumed by it."""
    return RunIdentity(config.fingerprint(), config.model.name, config.source.uri)


def with_labels_key(chunk: pa.Table, resolver: LabelResolver) -> pa.Table:
    """The listing chunk with each entry's `labels_key` (`camray.io.done`): its labels resolved against the
    model's classes; null where it carries none. Labels that name no class get a key no result has: the image
    becomes an error row again, and errors are never done."""
    if chunk.column("labels").null_count == chunk.num_rows:
        return chunk.append_column(LABELS_KEY, pa.nulls(chunk.num_rows, pa.string()))
    keys = []
    for tokens in chunk.column("labels").to_pylist():
        if tokens is None:
            keys.append(None)
            continue
        try:
            keys.append(labels_key(resolver.class_ids(tokens)))
        except UnknownLabel:
            keys.append("?")
    return chunk.append_column(LABELS_KEY, pa.array(keys, pa.string()))


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


def storage_settings(config: JobConfig) -> S3Settings:
    """The run's S3 settings, endpoint resolved here and passed on explicitly: workers on other nodes may not
    share the driver's environment."""
    return S3Settings(
        S3Settings(config.storage.s3_endpoint_url).resolved_endpoint(),
        config.storage.s3_region,
        config.storage.s3_max_attempts,
    )


def _check_input(config: JobConfig, s3: S3Settings) -> None:
    """Refuses an input that is not there before the lease and any work (`InputNotFound`): a missing bucket or
    folder is the user's to fix, not a failed run. A store that cannot answer now leaves the question to the
    run, whose listing meets the same store and records the outage in its runs row."""
    if config.source.uri == SAMPLES_URI:
        return
    uri = config.source.uri
    if is_brace_pattern(uri):  # the names it expands to are looked up by the listing: their folder must be there
        uri = brace_folder(uri)
    try:
        check_input_exists(uri, s3)
    except InputNotFound:
        raise
    except OSError as exc:
        logger.debug("the input could not be looked at before the lease: %s", exc)


@dataclass
class _ListingProgress:
    """The listing step's counts as it goes (a run that fails mid-listing still records how far it got)."""

    run_id: str
    attempt: int
    prior: PriorWork | None
    listed: int = 0
    skipped: int = 0


@dataclass
class _Record:
    """What the attempt has established so far, for its summary and runs row however it ends. Each step returns
    its result and `_work` files it here; no step reads it."""

    model: ModelFacts | None = None
    prior: PriorWork | None = None
    listing: _ListingProgress | None = None
    cluster: ClusterFacts = ClusterFacts()
    stats_uri: str | None = None
    files: tuple[str, ...] = ()
    message: str | None = None


def run_job(config: JobConfig) -> RunSummary:
    """Runs one job under the output's lease and returns its summary.

    Raises `LeaseHeld` when another run holds the output, `SetupError` (or `ConfigError`, `InputNotFound`) when the
    job cannot start as configured, and the underlying error when the run fails; `RunInterrupted` on SIGTERM.
    Every run that took the lease leaves its runs row."""
    s3 = storage_settings(config)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    try:
        setup = resolve_run_setup(config, s3)
        _check_input(config, s3)
    except Exception as exc:
        _push_refused(config, exc, time.perf_counter() - clock)
        raise
    output = Output(config.sink.uri, s3, new_format=config.sink.format)
    sink_settings = config.sink
    run = OutputRun.begin(
        output,
        identity(config),
        started,
        resume=sink_settings.resume,
        wait_for_lease=sink_settings.wait_for_lease,
        lease_seconds=sink_settings.lease_seconds,
    )
    sink = run.datasink(sink_settings.rows_per_file)
    record = _Record()
    status = "failed"
    try:
        with _sigterm_interrupts():
            status = _work(config, setup, run, sink, record)
    except RunInterrupted as exc:
        status, record.message = "interrupted", f"interrupted: {exc}; the work done so far is kept for the next run"
        logger.warning("run %s %s", run.run_id, record.message)
        raise
    except BaseException as exc:
        outage = store_failure(exc)
        status, record.message = "failed", failure_message(exc)
        # Into the run's log, saved below; the terminal gets the one line the command line prints.
        logger.error("run %s failed: %s", run.run_id, record.message, exc_info=exc, extra={LOG_ONLY: True})
        if outage is not None and outage is not exc:  # a task's outage arrives wrapped in Ray's traceback
            raise outage from exc
        raise
    finally:
        run.discard_listing()
        counts = sink.counts
        logger.info(
            "run %s: %d S3 retries (read %d, write %d)",
            run.run_id,
            counts.io_retries,
            counts.read_retries,
            counts.write_retries,
        )
        save_run_log(run.log_uri, run.save_log)
        try:
            summary = _summary(config, run, record, sink, status, time.perf_counter() - clock)
            row = runs_row(config, summary, run.attempt.started, record.model, record.cluster, counts.io_retries)
            run.write_runs_row(row)
            push_outcome(config.metrics, summary, counts)
        finally:
            run.release()
    return summary


def _push_refused(config: JobConfig, exc: Exception, seconds: float) -> None:
    """A night whose setup fails (weights, labels, an input that is not there) leaves no runs row, but its
    schedule fired and did nothing: it pushes a failed status so that the alert on failed runs names it, not
    only the later one on a stale success."""
    summary = RunSummary(
        run_id="",
        status="failed",
        listed=0,
        skipped=0,
        results=0,
        errors=0,
        seconds=seconds,
        output_uri=config.sink.uri,
        result_files=(),
        message=failure_message(exc),
    )
    push_outcome(config.metrics, summary, WrittenCounts())


# In the text of an error that Ray carried from a worker: Python's line between an exception and the one it caused,
# and an exception's own line (`module.Type: message`, at the start of a line).
_CAUSED = "\nThe above exception was the direct cause of the following exception:\n"
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*): (.+)$", re.MULTILINE)


def failure_message(exc: BaseException) -> str:
    """What failed a run, in one line for its runs row and the terminal: an outage's own message, else the type and
    first line of the exception that camray's code raised.

    A task's exception reaches the driver as Ray's wrapper (`RayTaskError`), whose text is the worker's traceback
    with the exception chain: causes first, then what the task raised, then Ray's own `UserCodeException`. The
    exception before Ray's is the one to name."""
    outage = store_failure(exc)
    if outage is not None:
        return str(outage)
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ray.exceptions.RayTaskError):
            chain = str(current).split(_CAUSED)
            raised = _EXCEPTION_LINE.findall(chain[-2] if len(chain) > 1 else chain[0])
            if raised:
                name, message = raised[-1]
                return f"{name.rsplit('.', 1)[-1]}: {message.strip()}"
        cause = getattr(current, "cause", None)
        current = cause if isinstance(cause, BaseException) else current.__cause__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _work(config: JobConfig, setup: ModelSetup, run: OutputRun, sink: CamDatasink, record: _Record) -> str:
    """The attempt's steps once the output is leased; returns its status."""
    record.model = model = ModelFacts(setup.weights_source, setup.weights_sha256, setup.input_size, setup.interpolation)
    record.prior = prior = run.resume(identity(config))
    record.listing = listing = _ListingProgress(run.run_id, run.number, prior)
    staged = _list_inputs(config, run, listing, LabelResolver(setup.class_names))

    _ensure_ray(config)
    _take_sigterm()
    # Read now: after a failure the cluster may be gone, and asking it then would hang the runs row.
    record.cluster = cluster_facts()
    resources = plan_resources(
        config, ray.cluster_resources(), staged.images, decode_side(config.tiling, model.input_size)
    )
    configure_data_context(config, resources)
    logger.info(
        "run %s: %d predictor actors, batches of %d (%d at once an actor), decoded on the %s, blocks up to %.0f MiB, "
        "object store budget %.0f MiB",
        run.run_id,
        resources.num_actors,
        resources.batch_size,
        resources.calls_per_actor,
        "device" if resources.decode == "device" else "CPU",
        resources.block_bytes / 2**20,
        resources.object_store_bytes / 2**20,
    )

    if staged.rows:
        record.stats_uri = _annotate(config, setup, run, staged, resources, sink)
    accounted = sink.counts.results + sink.counts.errors
    expected, untallied = staged.expected_rows(run.output.s3)
    if accounted != expected:
        shortfall = (
            untallied
            if expected is None
            else f"accounted for {accounted} of {expected} inputs (blocks dropped under `runtime.max_errored_blocks`)"
        )
        record.message = f"{shortfall}; the staged work is kept and the next run finishes the rest"
        logger.error("run %s %s", run.run_id, record.message)
        return "incomplete"
    alike = _all_failed_alike(sink.counts)
    if alike is not None:
        record.message = alike
        logger.error("run %s failed: %s", run.run_id, record.message)
        return "failed"
    record.files = run.commit()
    return "succeeded"


# Fewer images than this, all failing alike, may be down to the files themselves: one corrupt new photo on a night
# with nothing else new is not a broken job.
ALL_FAILED_MIN_IMAGES = 2
# The example error's message in the runs row, at most.
EXAMPLE_CHARS = 200


def _all_failed_alike(counts: WrittenCounts) -> str | None:
    """Why the attempt failed, when every image it processed (at least `ALL_FAILED_MIN_IMAGES`) failed at one
    stage with one error type: a broken setup (credentials, a folder not mounted on the workers, a missing codec,
    a model that rejects every input) that error rows alone would record as a succeeded run. None otherwise.

    Only this attempt's images count. Its rows stay staged and the next run resumes the run without them: a night
    of nothing but bad new files fails once, and the next one commits their error rows."""
    if counts.results or counts.errors < ALL_FAILED_MIN_IMAGES or len(counts.errors_by_kind) != 1:
        return None
    ((stage, error_type),) = counts.errors_by_kind
    uri, message = counts.error_examples[(stage, error_type)]
    first_line = (message.strip().splitlines() or [""])[0][:EXAMPLE_CHARS]
    return (
        f"all {counts.errors} images failed at stage `{stage}` with {error_type}, e.g. {uri}: {first_line}; "
        "nothing was committed, and the next run commits these error rows unless its own images all fail alike"
    )


def _list_inputs(
    config: JobConfig, run: OutputRun, listing: _ListingProgress, resolver: LabelResolver
) -> StagedListing | StagedContainers:
    """Lists the source and stages what is left to do under `_listing/`, for the read tasks."""
    output = run.output
    source_uri = config.source.uri
    if source_uri == SAMPLES_URI:
        source_uri = str(export_samples(SAMPLES_FOLDER).resolve())
    with store_errors("listing of", source_uri, output.s3):
        kind = input_format(config, source_uri, output.s3)
        if is_container_format(kind):  # WebDataset shards, Parquet image tables
            staged = stage_containers(config, run, listing, source_uri, kind)
        else:
            listed = _listed(config, source_uri, output.s3, listing, resolver)
            if config.sink.incremental:
                with store_errors("reading of the done work in", output.uri, output.s3):
                    done = DoneSet.of(output, config.model.name, config.fingerprint())
                listed = _counted(without_done(listed, done), listing)
            staged = run.stage_listing(listed, config.runtime.decode_batch_size)
    logger.info(
        "run %s: %d listed, %d already done, %d done by earlier attempts, %d to process",
        listing.run_id,
        listing.listed,
        listing.skipped,
        len(listing.prior.inputs) if listing.prior else 0,
        staged.rows,
    )
    return staged


def _listed(
    config: JobConfig, source_uri: str, s3: S3Settings, listing: _ListingProgress, resolver: LabelResolver
) -> Iterator[pa.Table]:
    """The source's listing, up to `source.limit`, each entry with its labels' key."""
    source = config.source
    for chunk in iter_listing(source_uri, source.extensions, source.recursive, s3, labels_from=source.labels_from):
        if source.limit is not None:
            chunk = chunk.slice(0, max(0, source.limit - listing.listed))
        listing.listed += chunk.num_rows
        yield with_labels_key(chunk, resolver)
        if source.limit is not None and listing.listed >= source.limit:
            break


def _counted(chunks: Iterator[pa.Table], listing: _ListingProgress) -> Iterator[pa.Table]:
    """The chunks left once what is done is skipped; counts the skipped as the listing ends."""
    kept = 0
    for chunk in chunks:
        kept += chunk.num_rows
        yield chunk
    listing.skipped += listing.listed - kept


def _annotate(
    config: JobConfig,
    setup: ModelSetup,
    run: OutputRun,
    staged: StagedListing | StagedContainers,
    resources: Resources,
    sink: CamDatasink,
) -> str:
    """Reads, decodes, predicts and writes the staged inputs into the sink; returns where Ray Data's statistics went.

    Ray Data's per-operator statistics run to hundreds of lines: a file beside the output, linked from the runs
    row, rather than the terminal."""
    ds = _plan(config, setup, run, staged, resources)
    ds.write_datasink(sink, ray_remote_args={"num_cpus": WRITE_CPUS})
    return run.write_stats(ds.stats())


def _plan(
    config: JobConfig,
    setup: ModelSetup,
    run: OutputRun,
    staged: StagedListing | StagedContainers,
    resources: Resources,
) -> ray.data.Dataset:
    input_size = setup.input_size
    run_id, s3 = run.run_id, run.output.s3
    s3_plain = dataclasses.asdict(s3)  # workers rebuild S3Settings from plain data
    if isinstance(staged, StagedContainers):
        fmt = container_format(config, staged.kind)
        ds = read_stages(
            config, staged, fmt, s3, decode_side(config.tiling, input_size), setup.interpolation, resources.decode
        )
        return _predict(ds, config, setup, run_id, s3_plain, resources)
    # One item per listing file, read by the read+decode tasks themselves. Ray Data's `read_parquet` would add
    # a file-listing task wanting a whole CPU, which a full actor pool never leaves free: the run stalled.
    listing_files = run.listing_file_uris(staged)
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
            "decode": resources.decode,
            "interpolation": setup.interpolation,
        },
        num_cpus=config.runtime.decode_cpus,
    )
    return _predict(ds, config, setup, run_id, s3_plain, resources)


def _predict(
    ds: ray.data.Dataset,
    config: JobConfig,
    setup: ModelSetup,
    run_id: str,
    s3_plain: dict[str, object],
    resources: Resources,
) -> ray.data.Dataset:
    return ds.map_batches(
        Predictor,
        batch_size=resources.batch_size,
        # The whole pool from the start: grown on demand, a new actor waits for CPUs that read+decode tasks,
        # running ahead, keep taking; measured, a job then ran on one actor of two.
        compute=ray.data.ActorPoolStrategy(
            min_size=resources.num_actors,
            max_size=resources.num_actors,
            max_concurrent_calls_per_actor=resources.calls_per_actor,
            enable_true_multi_threading=resources.calls_per_actor > 1,
        ),
        num_gpus=resources.gpus_per_actor,
        num_cpus=resources.cpus_per_actor,
        # Merged into the job's runtime environment by Ray; glibc reads these at process start.
        runtime_env={"env_vars": ALLOCATOR_ENV},
        fn_constructor_kwargs={
            "config": config.model_dump(mode="json"),
            "setup": setup.to_plain(),
            "run_id": run_id,
            "s3": s3_plain,
            "cpu_threads": resources.cpu_threads,
        },
    )


def _summary(
    config: JobConfig, run: OutputRun, record: _Record, sink: CamDatasink, status: str, seconds: float
) -> RunSummary:
    prior = record.prior
    prior_results = prior.results if prior else 0
    prior_errors = prior.errors if prior else 0
    return RunSummary(
        run_id=run.run_id,
        status=status,
        listed=record.listing.listed if record.listing else 0,
        skipped=record.listing.skipped if record.listing else 0,
        results=sink.counts.results + prior_results,
        errors=sink.counts.errors + prior_errors,
        seconds=seconds,
        output_uri=config.sink.uri,
        result_files=tuple(run.output.store.uri_of(f) for f in record.files if f.startswith("results/")),
        attempt=run.number,
        resumed=prior_results + prior_errors,
        processed=sink.counts.results + sink.counts.errors,
        message=record.message,
        stats_uri=record.stats_uri,
        errors_by_stage=dict(sink.counts.errors_by_stage + (prior.errors_by_stage if prior else Counter())),
    )
