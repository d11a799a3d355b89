"""Skip-done (`camray.io.done`): DuckDB's anti-join against the current rows of a real `results` table (a Delta
table, local and on the moto S3 server; a Parquet output's rows of succeeded runs), checked against a plain set;
and through the real job, a second run skips everything."""

from __future__ import annotations

import random
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from outputs_made import delta_output, parquet_output, runs_row

from camray.io import done as done_module
from camray.io import table_stream
from camray.io.done import DoneSet, without_done, without_inputs
from camray.io.listing import LISTING
from camray.io.output import Output
from camray.io.schema import RESULTS
from camray.io.sources import S3Settings

MODEL, FINGERPRINT = "lite0", "f1"
SUCCEEDED = ("run-a", "run-b")


def _results_table(rows: list[tuple[str, str, str, str, str]]) -> pa.Table:
    """Rows of (image_uri, source_version, run_id, model, config_fingerprint), other columns null, as written."""
    columns = {field.name: pa.nulls(len(rows), field.type) for field in RESULTS}
    for index, name in enumerate(("image_uri", "source_version", "run_id", "model", "config_fingerprint")):
        columns[name] = pa.array([row[index] for row in rows], pa.string())
    return pa.table(columns, schema=RESULTS)


def _history(rng: random.Random, images: int) -> list[tuple[str, str, str, str, str]]:
    """Each image once, at some version, written by a succeeded run or not, with these settings or others."""
    rows = []
    for index in range(images):
        run = rng.choice([*SUCCEEDED, "run-crashed"])
        model = MODEL if rng.random() < 0.9 else "resnet50"
        fingerprint = FINGERPRINT if rng.random() < 0.9 else "f2"
        version = "" if rng.random() < 0.05 else f"{index}-{rng.randrange(3)}"
        rows.append((f"s3://b/img-{index:06d}.jpg", version, run, model, fingerprint))
    return rows


def _listing(rng: random.Random, images: int) -> pa.Table:
    """Some images of the history (at its version or another), some new, some without a version."""
    uris, versions = [], []
    for index in rng.sample(range(images * 2), images):
        uris.append(f"s3://b/img-{index:06d}.jpg")
        versions.append("" if rng.random() < 0.05 else f"{index}-{rng.randrange(3)}")
    return pa.table([uris, [1] * len(uris), versions, [None] * len(uris)], schema=LISTING)


def _reference(listing: pa.Table, history: list[tuple[str, str, str, str, str]]) -> list[tuple[str, str]]:
    done = {
        (uri, version)
        for uri, version, run, model, fingerprint in history
        if run in SUCCEEDED and model == MODEL and fingerprint == FINGERPRINT and version
    }
    pairs = zip(listing.column("uri").to_pylist(), listing.column("version").to_pylist(), strict=True)
    return [(uri, version) for uri, version in pairs if not version or (uri, version) not in done]


def _files(rows, files: int) -> list[pa.Table]:
    step = -(-len(rows) // files)
    return [_results_table(rows[index * step : (index + 1) * step]) for index in range(files)]


RUNS = [runs_row("run-a"), runs_row("run-b", hour=2), runs_row("run-crashed", "failed", hour=3)]


def _history_output(uri: str, history, files: int, table_format: str = "delta", s3: S3Settings | None = None):
    """The history as an output: in Delta tables, the succeeded runs' rows committed and the crashed run's left
    uncommitted, as a crash leaves them; in a Parquet output, every row beside its runs row."""
    if table_format == "parquet":
        return parquet_output(uri, {"results": _files(history, files)}, RUNS)
    committed = [row for row in history if row[2] in SUCCEEDED]
    crashed = [row for row in history if row[2] not in SUCCEEDED]
    return delta_output(str(uri), {"results": _files(committed, files)}, RUNS, {"results": _files(crashed, 1)}, s3=s3)


def _kept(chunks) -> list[tuple[str, str]]:
    """(uri, version) of every entry the chunks hold, in order."""
    pairs = []
    for chunk in chunks:
        pairs += zip(chunk.column("uri").to_pylist(), chunk.column("version").to_pylist(), strict=True)
    return pairs


def _chunks_of(table: pa.Table, rows: int) -> list[pa.Table]:
    return [table.slice(start, rows) for start in range(0, table.num_rows, rows)]


@pytest.mark.parametrize("table_format", ["delta", "parquet"])
def test_the_listing_without_what_succeeded_runs_did_in_order_as_a_set_says(table_format, tmp_path, monkeypatch):
    rng = random.Random(7)
    history = _history(rng, 3000)
    output = _history_output(tmp_path, history, 5, table_format)
    listing = _listing(rng, 2000)
    monkeypatch.setattr(table_stream, "FILES_PER_SCAN", 2)  # several small datasets, as over a long history
    monkeypatch.setattr(table_stream, "BATCH_ROWS", 128)  # several batches a file
    done = DoneSet.of(output, MODEL, FINGERPRINT)

    out = list(without_done(_chunks_of(listing, 300), done, out_rows=250))

    assert _kept(out) == _reference(listing, history)
    assert 0 < len(_kept(out)) < listing.num_rows
    assert all(chunk.schema == LISTING and chunk.num_rows <= 250 for chunk in out)


def test_an_output_without_results_or_succeeded_runs_skips_nothing(tmp_path):
    listing = _listing(random.Random(1), 50)
    crashed = delta_output(str(tmp_path / "crashed"), {}, [], {"results": _files(_history(random.Random(1), 50), 1)})
    for output in (Output(str(tmp_path / "new")), crashed):
        assert _kept(without_done([listing], DoneSet.of(output, MODEL, FINGERPRINT))) == _kept([listing])


def test_the_join_spills_to_disk_beyond_its_memory_limit(tmp_path, monkeypatch, caplog):
    """A listing whose hash table is larger than DuckDB's memory limit still gives the exact answer."""
    import logging

    rng = random.Random(3)
    history = _history(rng, 200_000)
    output = _history_output(tmp_path, history, 4)
    listing = _listing(rng, 150_000)
    monkeypatch.setattr(done_module, "MEMORY_LIMIT", "32MB")
    done = DoneSet.of(output, MODEL, FINGERPRINT)

    with caplog.at_level(logging.INFO, logger="camray.io.done"):
        assert _kept(without_done(_chunks_of(listing, 50_000), done)) == _reference(listing, history)
    spilled = re.search(r"spilled ([0-9.]+) MiB", caplog.text)
    assert spilled and float(spilled.group(1)) > 0, caplog.text


def test_what_earlier_attempts_hold_is_left_out_by_uri_whatever_its_version():
    listing = pa.table([["a.jpg", "b.jpg", "c.jpg"], [1, 1, -1], ["1-10", "1-20", ""], [None] * 3], schema=LISTING)
    assert without_inputs(listing, pa.array(["b.jpg", "c.jpg", "gone.jpg"])).column("uri").to_pylist() == ["a.jpg"]
    assert without_inputs(listing, pa.array([], pa.string())).equals(listing)


def test_results_written_by_an_older_camray_are_skipped_and_underscore_folders_are_not_read(tmp_path):
    """In a Parquet output, files under other names, in a sub-folder, with columns in another order, without
    camray's schema metadata and without the map columns, count as done; `_`-folders and hidden files beside them
    do not."""
    parquet_output(tmp_path, {}, [runs_row("run-a")])
    results = tmp_path / "results"
    (results / "2025").mkdir(parents=True)
    older = pa.table(
        {
            "run_id": ["run-a", "run-a"],
            "config_fingerprint": [FINGERPRINT, FINGERPRINT],
            "model": [MODEL, MODEL],
            "image_uri": ["s3://b/old-1.jpg", "s3://b/old-2.jpg"],
            "source_version": ["10-1", "10-2"],
        }
    )
    pq.write_table(older, results / "2025" / "part-0.parquet")
    (results / "_index").mkdir()
    pq.write_table(
        _results_table([("s3://b/new.jpg", "1-1", "run-a", MODEL, FINGERPRINT)]), results / "_index/x.parquet"
    )
    pq.write_table(_results_table([("s3://b/new.jpg", "1-1", "run-a", MODEL, FINGERPRINT)]), results / ".tmp.parquet")
    listing = pa.table(
        [["s3://b/old-1.jpg", "s3://b/old-2.jpg", "s3://b/new.jpg"], [1, 1, 1], ["10-1", "10-3", "1-1"], [None] * 3],
        schema=LISTING,
    )
    done = DoneSet.of(Output(str(tmp_path)), MODEL, FINGERPRINT)

    assert _kept(without_done([listing], done)) == [("s3://b/old-2.jpg", "10-3"), ("s3://b/new.jpg", "1-1")]


@pytest.mark.integration
def test_the_history_is_read_from_s3_through_pyarrow(s3_server, tmp_path):
    import boto3

    boto3.client("s3").create_bucket(Bucket="camray-done")
    rng = random.Random(11)
    history = _history(rng, 500)
    output = _history_output("s3://camray-done/out", history, 3, s3=S3Settings(s3_server))
    assert output.is_delta
    listing = _listing(rng, 400)
    done = DoneSet.of(Output("s3://camray-done/out", S3Settings(s3_server)), MODEL, FINGERPRINT)

    assert _kept(without_done([listing], done)) == _reference(listing, history)


@pytest.mark.integration
def test_a_history_read_failed_past_the_sdks_retries_resumes_where_it_broke(s3_server, tmp_path, monkeypatch, caplog):
    """A 503 answered to a ranged GET smaller than S3's error body (a column chunk of a few dozen bytes) fails inside
    the AWS SDK as `INTERNAL_FAILURE ... Failed to flush response stream`, which pyarrow's retries do not cover:
    the stream reopens the file it was reading and skips the rows it already gave."""
    import boto3

    from camray.bench.s3_proxy import FaultRates, FaultyS3Proxy
    from camray.io.sources import filesystem_for

    boto3.client("s3").create_bucket(Bucket="camray-done-cut")
    rng = random.Random(13)
    history = _history(rng, 4000)
    uri = "s3://camray-done-cut/out"
    _history_output(uri, history, 12, s3=S3Settings(s3_server))
    monkeypatch.setattr(table_stream, "FILES_PER_SCAN", 3)
    # Each read again needs every column chunk of the row group read again: at this rate, a few may fail in a row.
    monkeypatch.setattr(table_stream, "READ_ATTEMPTS", 12)
    monkeypatch.setattr(table_stream, "BATCH_ROWS", 100)
    monkeypatch.setattr(table_stream, "RETRY_BACKOFF_S", 0.01)
    direct = DoneSet.of(Output(uri, S3Settings(s3_server)), MODEL, FINGERPRINT)
    expected = direct.batches().read_all()

    rates = FaultRates(slowdown=0.15, reset=0, delay=0)
    with FaultyS3Proxy(s3_server, seed=5, rates=rates, force_each=False) as proxy:
        filesystem = filesystem_for(uri, S3Settings(proxy.endpoint))[0]
        cut = DoneSet(direct.files, filesystem, direct.wanted).batches().read_all()
        slowdowns = proxy.injected("GET")["slowdown"]

    resumed = [record for record in caplog.records if "reading it again" in record.getMessage()]
    assert slowdowns > 0 and resumed, "the store failed a read past the SDK's retries"
    assert cut.num_rows == expected.num_rows > 0
    assert cut.to_pylist() == expected.to_pylist(), "every row once, in the same order"


class _Poller:
    """A reader polling the results table's current version through `deltalake` while a run goes: what it saw."""

    def __init__(self, out) -> None:
        import threading

        self.out = out
        self.seen: set[tuple[tuple[str, str], ...]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        from readers import delta_rows

        while not self._stop.wait(0.02):
            try:
                rows = delta_rows(self.out, "results", ["image_uri", "run_id"])
            except OSError:  # the table being created
                continue
            if rows is not None:
                pairs = zip(rows.column("image_uri").to_pylist(), rows.column("run_id").to_pylist(), strict=True)
                self.seen.add(tuple(sorted(pairs)))

    def __enter__(self) -> _Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.mark.integration
def test_a_second_run_over_the_same_input_skips_everything(ray_cluster, small_photos, tmp_path):
    """Three nights over one folder; a reader polling the results table all along sees each run whole or not at
    all, never part of one: its files, staged one write task at a time, become current in one commit."""
    from readers import delta_rows

    from camray.config import load_config
    from camray.runner import run_job

    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(small_photos.iterdir())[:6]:
        shutil.copy2(path, images / path.name)
    config = load_config(
        overrides={
            "source.uri": str(images),
            "sink.uri": str(tmp_path / "out"),
            "runtime.batch_size": 2,
            "sink.rows_per_file": 2,
        }
    )

    def current() -> tuple[tuple[str, str], ...]:
        rows = delta_rows(tmp_path / "out", "results", ["image_uri", "run_id"]).to_pylist()
        return tuple(sorted((row["image_uri"], row["run_id"]) for row in rows))

    with _Poller(tmp_path / "out") as poller:
        first = run_job(config)
    assert (first.status, first.listed, first.skipped, first.results + first.errors) == ("succeeded", 6, 0, 6)
    assert poller.seen <= {(), current()} and current() in poller.seen  # none of the run, or all of it

    second = run_job(config)
    assert (second.status, second.listed, second.skipped, second.results, second.errors) == ("succeeded", 6, 6, 0, 0)

    # A rewritten image has a new version: only it is done again, and its row replaces the old one at once.
    rewritten = sorted(images.iterdir())[0]
    rewritten.write_bytes(rewritten.read_bytes())
    before = current()
    with _Poller(tmp_path / "out") as poller:
        third = run_job(config)
    assert (third.listed, third.skipped, third.results + third.errors) == (6, 5, 1)
    after = current()
    assert poller.seen <= {before, after} and len(after) == 6
    assert [uri for uri, run_id in after if run_id == third.run_id] == [str(rewritten)]


@pytest.mark.integration
def test_a_parquet_output_keeps_its_format_through_later_runs(ray_cluster, small_photos, tmp_path):
    """`sink.format: parquet` writes plain Parquet; a later run with the default (delta) finds the output's format
    and keeps it: it skips what is done, and its readers see the newest row of each image of succeeded runs."""
    from camray.config import load_config
    from camray.io.output import Output
    from camray.runner import run_job

    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    for path in sorted(small_photos.iterdir())[:3]:
        shutil.copy2(path, images / path.name)
    given = {"source.uri": str(images), "sink.uri": str(out), "runtime.batch_size": 2}
    first = run_job(load_config(overrides={**given, "sink.format": "parquet"}))
    rewritten = sorted(images.iterdir())[0]
    rewritten.write_bytes(rewritten.read_bytes())
    second = run_job(load_config(overrides=given))

    assert (first.status, first.results + first.errors) == ("succeeded", 3)
    assert (second.status, second.skipped, second.results + second.errors) == ("succeeded", 2, 1)
    assert not (out / "results" / "_delta_log").exists() and not (out / "runs" / "_delta_log").exists()
    files_of = [path.name.split("-a01-")[0] for path in (out / "results").glob("*.parquet")]
    assert set(files_of) == {first.run_id, second.run_id} and files_of.count(second.run_id) == 1
    assert not list((out / "_staging").glob("*/results/*.parquet"))  # moved into place at the commit
    output = Output(str(out))
    assert not output.is_delta
    newest = {
        row["image_uri"]: row["run_id"] for row in output.latest_results(None, ["image_uri", "run_id"]).to_pylist()
    }
    assert len(newest) == 3 and newest[str(rewritten)] == second.run_id
    assert sorted(output.succeeded_run_ids()) == sorted([first.run_id, second.run_id])


def test_labels_are_part_of_done_where_the_listing_gives_them(tmp_path):
    """An entry whose labels' key equals its result's labels is done; one whose labels changed, or whose result
    has none (written before labels existed, a file a migration kept), is redone; an entry without a key is
    matched as before."""
    from camray.io.done import LABELS_KEY, labels_key

    rows = _results_table([(f"s3://b/{name}.jpg", "1-1", "run-a", MODEL, FINGERPRINT) for name in "abcde"])
    given = pa.array(
        [[{"class_id": 3, "label": "c"}, {"class_id": 1, "label": "a"}], [{"class_id": 3, "label": "c"}], None, None]
        + [[]],
        RESULTS.field("labels").type,
    )
    older = pa.table(
        {"run_id": ["run-a"], "config_fingerprint": [FINGERPRINT], "model": [MODEL]}
        | {"image_uri": ["s3://b/f.jpg"], "source_version": ["1-1"]}
    )  # a version-2 file: no `labels` column
    with_labels = rows.set_column(RESULTS.get_field_index("labels"), "labels", given)
    output = delta_output(str(tmp_path), {"results": [with_labels, older]}, [runs_row("run-a")])
    keys = [labels_key([1, 3, 3]), labels_key([3, 5]), None, labels_key([2]), labels_key([]), labels_key([4])]
    listing = pa.table(
        [[f"s3://b/{name}.jpg" for name in "abcdef"], [1] * 6, ["1-1"] * 6, [["x"]] * 6], schema=LISTING
    ).append_column(LABELS_KEY, pa.array(keys, pa.string()))
    done = DoneSet.of(output, MODEL, FINGERPRINT)
    kept = [uri for uri, _ in _kept(without_done([listing], done))]
    assert keys[:2] == ["1,3", "3,5"] and kept == ["s3://b/b.jpg", "s3://b/d.jpg", "s3://b/f.jpg"]
