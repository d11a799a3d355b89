"""Skip-done for containers: which listed shards and table files are done, and, of the others, which samples to
read, with the driver's memory bounded whatever the output's history.

A container's listing entry says nothing of its samples, which only its reading reveals; the rule rests on what
succeeded runs wrote. A succeeded run accounted for every sample of every container it read (the runner checks
it against the read tasks' tallies), so the rows of succeeded runs with this model and settings name every sample
a container held at a version, including those that failed. Container C at version v is then:
- **done**, and skipped without a GET, when those rows hold a sample of C@v, every sample of C@v among them has a
  result row (a failure retried by a later run counts once fixed), and no failure of C@v itself (damage, a shard
  that could not be opened) is newer than its newest sample row;
- **read again for some samples** when rows of C@v exist but some of its samples have only failed (`only`: the
  samples to retry; a failure of the container itself comes again if the damage is still there);
- **read whole** when no row holds C@v: a new container, a rewritten one (another version), one never opened.

A resumed run (attempt n + 1 of a run) also leaves out what its earlier attempts staged (`skip`, by URI, whatever
the version, as for single files), and skips a container outright when the last attempt that read it to its end
(its tally) had every row it gave out staged.

All of it is set operations in DuckDB, out of core (`camray.io.done`'s settings): the listing is loaded into a
table, the history (the current rows) streams past it once, `errors` first (small: the failures), then `results`,
keeping per container its newest row and which failed samples have been fixed; what a resumed run staged streams
past it too. In a Delta table a sample has one current row, its latest run's, so a failure fixed since is no
longer there; in a Parquet output the rows of every succeeded run are, and the fixed ones are told apart here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from camray.io.bounded_duckdb import bounded_duckdb
from camray.io.container_samples import CONTAINER_KEY
from camray.io.done import MAX_THREADS, MEMORY_LIMIT
from camray.io.layout import SUCCEEDED
from camray.io.table_stream import stream_files

if TYPE_CHECKING:
    from camray.io.output import Output

logger = logging.getLogger(__name__)

# What each staged listing entry says of a container to read.
TO_READ = pa.schema(
    [
        ("uri", pa.string()),
        ("size", pa.int64()),
        ("version", pa.string()),
        ("only_keys", pa.list_(pa.string())),  # null: every sample; else the keys to read
        ("skip_keys", pa.list_(pa.string())),  # keys an earlier attempt of the run staged
    ]
)
HISTORY = pa.schema(
    [
        ("container_uri", pa.string()),
        ("source_version", pa.string()),
        ("image_uri", pa.string()),
        ("run_id", pa.string()),
        ("model", pa.string()),
        ("config_fingerprint", pa.string()),
    ]
)
PRIOR = pa.schema([("container_uri", pa.string()), ("image_uri", pa.string()), ("attempt", pa.int32())])
TALLIES = pa.schema([("container_uri", pa.string()), ("attempt", pa.int32()), ("emitted", pa.int64())])
OUT_ROWS = 1024


@dataclass(frozen=True)
class ContainerHistory:
    """Where the done work is: the current rows of `output`'s `results` and `errors`, of the succeeded runs with
    `model` and `fingerprint`. Nothing is read until `to_read` runs."""

    output: Output
    model: str
    fingerprint: str

    def run_order(self) -> pa.Array:
        """The succeeded runs with this model and settings, newest first."""
        runs = self.output.scan(
            "runs",
            ["run_id", "started_at"],
            (pc.field("status") == SUCCEEDED)
            & (pc.field("model") == self.model)
            & (pc.field("config_fingerprint") == self.fingerprint),
        ).read_all()
        ordered = runs.sort_by([("started_at", "descending"), ("run_id", "descending")])
        return ordered.column("run_id").combine_chunks()

    def rows(self, table: str, runs: pa.Array) -> pa.RecordBatchReader:
        """(container_uri, source_version, image_uri, run_order) of the current rows of `table` of `runs` that
        name a container at a version; `run_order` is the run's position in `runs` (0: the newest)."""
        wanted = (
            pads.field("run_id").isin(runs)
            & pads.field("container_uri").is_valid()
            & (pads.field("source_version") != "")
        )
        if table == "results":
            wanted = (
                wanted & (pads.field("model") == self.model) & (pads.field("config_fingerprint") == self.fingerprint)
            )
        files = self.output.files(table)
        columns = ["container_uri", "source_version", "image_uri", "run_id"]
        return _with_run_order(stream_files(files, self.output.store.fs, HISTORY, columns, wanted), runs)


def _with_run_order(reader: pa.RecordBatchReader, runs: pa.Array) -> pa.RecordBatchReader:
    schema = pa.schema([*(field for field in reader.schema if field.name != "run_id"), ("run_order", pa.int32())])

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            order = pc.index_in(batch.column("run_id"), value_set=runs)
            columns = [batch.column(name) for name in schema.names[:-1]]
            yield pa.RecordBatch.from_arrays([*columns, order.cast(pa.int32())], schema=schema)

    return pa.RecordBatchReader.from_batches(schema, batches())


@dataclass
class Skipped:
    """How many listed containers were done already (`done`), and how many an earlier attempt of the run
    finished (`staged`)."""

    done: int = 0
    staged: int = 0


def to_read(
    chunks: Iterable[pa.Table],
    history: ContainerHistory | None,
    prior: pa.RecordBatchReader | None,
    tallies: pa.Table | None,
    skipped: Skipped,
    out_rows: int = OUT_ROWS,
) -> Iterator[pa.Table]:
    """The listed containers (`uri`, `size`, `version` chunks) left to read, as `TO_READ` chunks in the listing's
    order (see the module docstring); `skipped` counts the others.

    `prior`: (container_uri, image_uri, attempt) of the rows earlier attempts of the run staged; `tallies`:
    (container_uri, attempt, emitted) of the containers their read tasks read to the end."""
    runs = history.run_order() if history is not None else pa.array([], pa.string())
    if not len(runs) and prior is None:
        for chunk in chunks:
            yield _as_to_read(chunk)
        return
    # On disk: the listing and the history's keys may outgrow the limit; DuckDB spills beyond it.
    settings = {"preserve_insertion_order": False}
    threads = min(MAX_THREADS, os.cpu_count() or 1)
    with bounded_duckdb(MEMORY_LIMIT, threads=threads, on_disk=True, settings=settings) as con:
        yield from _query(con, chunks, history, runs, prior, tallies, skipped, out_rows)


def _as_to_read(chunk: pa.Table) -> pa.Table:
    n = chunk.num_rows
    return pa.table(
        [
            chunk.column("uri"),
            chunk.column("size"),
            chunk.column("version"),
            pa.nulls(n, pa.list_(pa.string())),
            pa.array([[]] * n, pa.list_(pa.string())),
        ],
        schema=TO_READ,
    )


def _query(
    con,
    chunks: Iterable[pa.Table],
    history: ContainerHistory | None,
    runs: pa.Array,
    prior: pa.RecordBatchReader | None,
    tallies: pa.Table | None,
    skipped: Skipped,
    out_rows: int,
) -> Iterator[pa.Table]:
    con.execute("CREATE TABLE listing (uri VARCHAR, size BIGINT, version VARCHAR, seq BIGINT)")
    position = 0
    for chunk in chunks:
        numbered = chunk.select(["uri", "size", "version"]).append_column(
            "seq", pa.array(range(position, position + chunk.num_rows), pa.int64())
        )
        con.register("chunk", numbered)
        con.execute("INSERT INTO listing SELECT uri, size, version, seq FROM chunk")
        con.unregister("chunk")
        position += chunk.num_rows
    if not position:
        return
    # The listing (one night's containers) is the side each join builds on; the history and the staged rows
    # stream past it. DuckDB cannot size an Arrow stream and would otherwise build on the stream.
    con.execute("SET disabled_optimizers = 'join_order,build_side_probe_side'")
    con.execute("CREATE TABLE err (seq BIGINT, image_uri VARCHAR, newest INTEGER)")
    con.execute("CREATE TABLE res (seq BIGINT, newest INTEGER, fixed VARCHAR[])")
    if len(runs):
        con.register("errors_rows", history.rows("errors", runs))
        con.execute(
            """
            INSERT INTO err SELECT l.seq, e.image_uri, min(e.run_order)
            FROM errors_rows e JOIN listing l ON e.container_uri = l.uri AND e.source_version = l.version
            GROUP BY l.seq, e.image_uri
            """
        )
        con.unregister("errors_rows")
        con.register("results_rows", history.rows("results", runs))
        con.execute(
            """
            INSERT INTO res
            SELECT l.seq, min(r.run_order), list(r.image_uri) FILTER (WHERE e.image_uri IS NOT NULL)
            FROM results_rows r JOIN listing l ON r.container_uri = l.uri AND r.source_version = l.version
            LEFT JOIN err e ON e.seq = l.seq AND e.image_uri = r.image_uri
            GROUP BY l.seq
            """
        )
        con.unregister("results_rows")
    con.execute("CREATE TABLE staged (seq BIGINT, image_uri VARCHAR, attempt INTEGER)")
    con.execute("CREATE TABLE tallied (seq BIGINT, attempt INTEGER, emitted BIGINT)")
    if prior is not None:
        con.register("prior_rows", prior)
        con.execute(
            """
            INSERT INTO staged SELECT l.seq, p.image_uri, p.attempt
            FROM prior_rows p JOIN listing l ON p.container_uri = l.uri
            """
        )
        con.unregister("prior_rows")
    if tallies is not None and tallies.num_rows:
        con.register("tally_rows", tallies)
        con.execute(
            """
            INSERT INTO tallied SELECT l.seq, t.attempt, t.emitted
            FROM tally_rows t JOIN listing l ON t.container_uri = l.uri
            """
        )
        con.unregister("tally_rows")
    con.execute("RESET disabled_optimizers")
    result = con.sql(
        """
        WITH errsum AS (
            SELECT e.seq,
                min(e.newest) FILTER (WHERE e.image_uri = l.uri) AS own_newest,
                min(e.newest) FILTER (WHERE e.image_uri <> l.uri) AS failed_newest,
                list(e.image_uri) FILTER (WHERE e.image_uri <> l.uri) AS failed
            FROM err e JOIN listing l USING (seq) GROUP BY e.seq
        ),
        last_tally AS (
            SELECT seq, max(attempt) AS attempt, arg_max(emitted, attempt) AS emitted FROM tallied GROUP BY seq
        ),
        prior_state AS (
            SELECT s.seq, list(s.image_uri) AS staged,
                count(*) FILTER (WHERE s.attempt = t.attempt) AS staged_by_last
            FROM staged s LEFT JOIN last_tally t USING (seq) GROUP BY s.seq
        )
        SELECT l.uri, l.size, l.version,
            least(res.newest, errsum.failed_newest) AS sample_newest,
            errsum.own_newest,
            list_filter(coalesce(errsum.failed, []), lambda x: NOT list_contains(coalesce(res.fixed, []), x)) AS redo,
            coalesce(prior_state.staged, []) AS staged,
            last_tally.attempt IS NOT NULL
                AND coalesce(prior_state.staged_by_last, 0) >= last_tally.emitted AS finished_by_attempt
        FROM listing l
        LEFT JOIN res USING (seq) LEFT JOIN errsum USING (seq)
        LEFT JOIN prior_state USING (seq) LEFT JOIN last_tally USING (seq)
        ORDER BY l.seq
        """
    )
    kept: list[dict] = []
    for batch in result.to_arrow_reader(out_rows):
        for row in batch.to_pylist():
            entry = _entry(row, skipped)
            if entry is not None:
                kept.append(entry)
        if kept:
            yield pa.Table.from_pylist(kept, schema=TO_READ)
            kept = []
    logger.info(
        "skip-done: %d containers listed, %d done already, %d finished by earlier attempts of this run",
        position,
        skipped.done,
        skipped.staged,
    )


def _key(container_uri: str, uri: str) -> str:
    return CONTAINER_KEY if uri == container_uri else uri[len(container_uri) + 1 :]


def _entry(row: dict, skipped: Skipped) -> dict | None:
    """A container's row of the query -> its `TO_READ` entry, or None when it is skipped."""
    uri = row["uri"]
    redo = row["redo"]
    read_before = row["sample_newest"] is not None
    own_newest = row["own_newest"]
    if read_before and not redo and (own_newest is None or own_newest > row["sample_newest"]):
        skipped.done += 1
        return None
    if row["finished_by_attempt"]:
        skipped.staged += 1
        return None
    return {
        "uri": uri,
        "size": row["size"],
        "version": row["version"],
        "only_keys": [_key(uri, item) for item in redo] if read_before else None,
        "skip_keys": [_key(uri, item) for item in row["staged"]],
    }
