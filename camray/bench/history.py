"""History benchmark: `make bench-history` or `python -m camray.bench.history [--history-rows 10000000]`.

Does a night's run cost more on an old output? An output is fabricated with H rows of earlier succeeded runs
in `results/` (the real schema, written as the sink writes it: files of `sink.rows_per_file` rows named by run;
the map, box and mask columns null, since the skip never reads them) and their rows in `runs/`. Then the job
runs over 60 new small JPEGs (crops of the sample photos), half of which the history holds at the same version
with the job's model and settings: those must be skipped, the other 30 processed.

Measured, each in a fresh driver process connected to one Ray cluster started beforehand:
- the run with a history of only those 30 rows, and with H rows: the driver's peak RSS and the wall time
  (`camray run`, imports included);
- `camray report`, `query` and `runs` after a kept run, over both outputs: peak RSS and wall time;
- `camray export coco` over an output of 10,000 rows and over the H-row one: its peak RSS (stopped at
  `--export-cap-gib`, so that it cannot take the machine down);
- `camray export masks` over an output of 100 rows and one of 10,000, each row a label map of two or three
  classes at 640 x 480 (`fabricate_label_maps`): its peak RSS and wall time (`--only-masks-export` runs this
  alone, without Ray or the H-row history).
Targets: driver peak with H rows <= 1.2x the peak with none; added wall time <= 30 s per 10 M rows; each export
within 1.5x. Prints a table and writes `bench-history-results.json`. Absolute numbers vary by machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from camray.bench.process import measure_process
from camray.io.layout import DELTA
from camray.io.optimize import optimize
from camray.io.output import Output
from camray.io.schema import RESULTS, RUNS

NEW_IMAGES = 60
DRIVER_RATIO, EXPORT_RATIO, SECONDS_PER_10M = 1.2, 1.5, 30.0
RUNS_OF_HISTORY = 300  # a year of nights, give or take
FABRICATED_RUN = "20251201T000000Z-"


def _strings(prefix: str, numbers: pa.Array, suffix: str = "") -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(numbers, pa.string()), suffix, "")


def fabricate_history(
    output: Path,
    rows: int,
    done: list[tuple[str, str]],
    model: str,
    fingerprint: str,
    rows_per_file: int = 4096,
    runs: int = RUNS_OF_HISTORY,
    table_format: str = DELTA,
) -> None:
    """`rows` history rows (plus the `done` (uri, version) pairs, in the last run) under `output/results/`, in
    files of `rows_per_file` rows spread over `runs` succeeded runs, each with its row in `output/runs/`: Delta
    tables (each run's files one commit, as nightly runs make them) or plain Parquet (`table_format`)."""
    import numpy as np

    results = output / "results"
    results.mkdir(parents=True, exist_ok=True)
    (output / "runs").mkdir(parents=True, exist_ok=True)
    run_ids = [f"{FABRICATED_RUN}{index:06x}" for index in range(max(1, runs))]
    nulls: dict[int, dict[str, pa.Array]] = {}
    files_of: dict[str, list[str]] = {}

    def write(uris: pa.Array, versions: pa.Array, run_id: str, index: int) -> None:
        count = len(uris)
        if count not in nulls:
            nulls[count] = {field.name: pa.nulls(count, field.type) for field in RESULTS}
        columns = dict(nulls[count])
        columns.update(
            image_uri=uris,
            source_version=versions,
            model=pa.array([model] * count, pa.string()),
            config_fingerprint=pa.array([fingerprint] * count, pa.string()),
            run_id=pa.array([run_id] * count, pa.string()),
        )
        path = results / f"{run_id}-a01-{index:05d}.parquet"
        pq.write_table(pa.table(columns, schema=RESULTS), path)
        files_of.setdefault(run_id, []).append(str(path))

    files = -(-rows // rows_per_file)
    for index in range(files):
        numbers = pa.array(np.arange(index * rows_per_file, min(rows, (index + 1) * rows_per_file)))
        folders = pc.divide(numbers, 1000)
        uris = pc.binary_join_element_wise(
            _strings("s3://bench-history/photos/", folders), _strings("", numbers, ".jpg"), "/"
        )
        versions = _strings("", pc.add(pc.multiply(numbers, 7919), 20_000), "-1764547200000000000")
        write(uris, versions, run_ids[index * len(run_ids) // files], index)
    if done:
        write(pa.array([uri for uri, _ in done]), pa.array([version for _, version in done]), run_ids[-1], files)
    started = datetime(2025, 12, 1, tzinfo=UTC)
    runs_table = {field.name: pa.nulls(len(run_ids), field.type) for field in RUNS}
    runs_table.update(
        run_id=pa.array(run_ids),
        status=pa.array(["succeeded"] * len(run_ids)),
        started_at=pa.array([started] * len(run_ids), pa.timestamp("us", tz="UTC")),
        finished_at=pa.array([started] * len(run_ids), pa.timestamp("us", tz="UTC")),
        model=pa.array([model] * len(run_ids)),
        config_fingerprint=pa.array([fingerprint] * len(run_ids)),
        schema_version=pa.array([2] * len(run_ids), pa.int32()),
    )
    pq.write_table(pa.table(runs_table, schema=RUNS), output / "runs" / "history.parquet")
    if table_format == DELTA:
        from camray.io.delta_format import DeltaFormat
        from camray.io.sources import S3Settings
        from camray.io.store import Store

        delta = DeltaFormat(Store(str(output), S3Settings()))
        delta.prepare()
        for run_id in run_ids:
            if run_id in files_of:
                delta.add_files("results", files_of[run_id], {"camray.run_id": run_id})
        delta.add_files("runs", [str(output / "runs" / "history.parquet")], {"camray.fabricated": True})


def fabricate_label_maps(output: Path, rows: int, rows_per_file: int = 4096, seed: int = 0) -> None:
    """An output of `rows` results of one succeeded run, each image's label map two or three classes at 640 x 480
    (`masks`, as the job writes them, from maps of 56 x 56 cells), under a thousand images a folder; the other map,
    box and mask columns null."""
    import numpy as np
    from pycocotools import mask as coco_mask

    # Not `camray.cam.label_maps`: it imports torch, and the export's measured peak would start from this
    # process's (a child's high-water mark starts from its parent's at the fork).
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    patterns = []  # a few label maps, reused: what is measured is the export, not the fabrication
    for _ in range(16):
        grid = np.zeros((56, 56), dtype=np.uint8)
        classes = int(rng.integers(2, 4))
        for value in range(1, classes + 1):
            y, x, r = (int(v) for v in rng.integers([8, 8, 5], [48, 48, 16]))
            ys, xs = np.ogrid[:56, :56]
            grid[(ys - y) ** 2 + (xs - x) ** 2 < r * r] = value
        ids = rng.choice(1000, size=classes, replace=False).tolist()
        rows_at = ((np.arange(height) + 0.5) * 56 / height).astype(int)
        cols_at = ((np.arange(width) + 0.5) * 56 / width).astype(int)
        full = grid[np.ix_(rows_at, cols_at)]
        entries = []
        for value, class_id in enumerate(ids, start=1):
            counts = coco_mask.encode(np.asfortranarray((full == value).astype(np.uint8)))["counts"].decode()
            entries.append(
                {"class_id": class_id, "label": f"class {class_id}", "size": [height, width], "counts": counts}
            )
        patterns.append(entries)
    run_id = f"{FABRICATED_RUN}000000"
    (output / "results").mkdir(parents=True, exist_ok=True)
    (output / "runs").mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, rows, rows_per_file)):
        count = min(rows_per_file, rows - start)
        numbers = range(start, start + count)
        columns = {field.name: pa.nulls(count, field.type) for field in RESULTS}
        columns.update(
            image_uri=pa.array([f"/bench-history/photos/{n // 1000}/{n}.jpg" for n in numbers]),
            width=pa.array([width] * count, pa.int32()),
            height=pa.array([height] * count, pa.int32()),
            masks=pa.array([patterns[n % len(patterns)] for n in numbers], RESULTS.field("masks").type),
            run_id=pa.array([run_id] * count),
        )
        pq.write_table(pa.table(columns, schema=RESULTS), output / "results" / f"{run_id}-a01-{index:05d}.parquet")
    started = datetime(2025, 12, 1, tzinfo=UTC)
    runs = {field.name: pa.nulls(1, field.type) for field in RUNS}
    runs.update(
        run_id=pa.array([run_id]),
        status=pa.array(["succeeded"]),
        started_at=pa.array([started], pa.timestamp("us", tz="UTC")),
        schema_version=pa.array([3], pa.int32()),
    )
    pq.write_table(pa.table(runs, schema=RUNS), output / "runs" / f"{run_id}.parquet")


def masks_export_case(name: str, output: Path, env: dict[str, str], logs: Path) -> dict[str, object]:
    """`camray export masks` over the output, in a fresh process: peak RSS, wall time and the files written."""
    dest = logs / f"masks-{name}"
    command = [sys.executable, "-m", "camray.cli", "export", "masks", "--output", str(output), "--dest", str(dest)]
    measured = measure_process(command, env, logs / f"masks-export-{name}.log")
    if measured.returncode != 0:
        raise RuntimeError(f"the masks export of the {name} output failed; see {logs}/masks-export-{name}.log")
    files = sum(1 for _ in (dest / "SegmentationClass").rglob("*.png"))
    shutil.rmtree(dest, ignore_errors=True)
    return {"peak_rss_mib": measured.peak_rss / 2**20, "seconds": measured.seconds, "files": files}


def masks_export(root: Path, env: dict[str, str], logs: Path, small: int, large: int) -> dict[str, object]:
    """The masks export over a `small`- and a `large`-row output of label maps, each fabricated fresh."""
    out: dict[str, object] = {}
    for name, rows in (("small", small), ("large", large)):
        fabricate_label_maps(root / f"masks-{name}", rows)
        out[name] = {"rows": rows, **masks_export_case(name, root / f"masks-{name}", env, logs)}
        shutil.rmtree(root / f"masks-{name}", ignore_errors=True)
    return out


def _newest_run(output: Output) -> dict:
    """The runs row of the run just measured: the one run that was not fabricated."""
    (run,) = [run for run in output.runs().to_pylist() if not run["run_id"].startswith(FABRICATED_RUN)]
    return run


def _versions(output: Output) -> dict[str, int]:
    """Each table's version now: what a measured run is undone to."""
    delta = output.format
    return {table: delta.table(table, refresh=True).version() for table in ("results", "errors", "runs")}


def run_case(
    name: str, output: Path, images: Path, env: dict[str, str], logs: Path, keep: bool = False
) -> dict[str, object]:
    """One `camray run` over the images; then, unless `keep`, the tables are restored to their versions before
    it, so that the next repeat on this output meets the same history."""
    tables = Output(str(output))
    before = _versions(tables)
    command = [sys.executable, "-m", "camray.cli", "run", "--input", str(images), "--output", str(output)]
    measured = measure_process(command, env, logs / f"run-{name}.log")
    if measured.returncode != 0:
        raise RuntimeError(f"run over the {name} history failed ({measured.returncode}); see {logs}/run-{name}.log")
    tables.refresh()
    run = _newest_run(tables)
    if (run["skipped"], run["results"] + run["errors"]) != (NEW_IMAGES // 2, NEW_IMAGES - NEW_IMAGES // 2):
        raise RuntimeError(f"run over the {name} history skipped {run['skipped']}, did {run['results']} + errors")
    for table, version in before.items() if not keep else ():
        delta = tables.format.table(table, refresh=True)
        if delta.version() > version:  # a table the run did not commit to (no errors) is as it was
            delta.restore(version)
    return {
        "peak_driver_rss_mib": measured.peak_rss / 2**20,
        "seconds": measured.seconds,
        "skipped": run["skipped"],
        "processed": run["results"] + run["errors"],
    }


_SKIP_ALONE = """
import sys, time
from camray.config import load_config
from camray.io.done import DoneSet, without_done
from camray.io.listing import iter_listing
from camray.io.output import Output
from camray.io.sources import S3Settings
images, output = sys.argv[1], sys.argv[2]
config = load_config(overrides={"source.uri": images, "sink.uri": output})
clock = time.perf_counter()
done = DoneSet.of(Output(output), config.model.name, config.fingerprint())
kept = sum(chunk.num_rows for chunk in without_done(iter_listing(images, [], True, S3Settings()), done))
print(f"kept {kept} in {time.perf_counter() - clock:.2f} s")
"""


def skip_alone(name: str, output: Path, images: Path, env: dict[str, str], logs: Path) -> dict[str, object]:
    """The skip step by itself, in a fresh process that imports only camray's config and IO: its peak RSS and
    wall time, without a run's noise (Ray, torch, the model) around it."""
    command = [sys.executable, "-c", _SKIP_ALONE, str(images), str(output)]
    measured = measure_process(command, env, logs / f"skip-{name}.log")
    text = (logs / f"skip-{name}.log").read_text()
    if measured.returncode != 0 or f"kept {NEW_IMAGES - NEW_IMAGES // 2} in" not in text:
        raise RuntimeError(f"skip step over the {name} history: {text[-2000:]}")
    seconds = float(text.rsplit(" in ", 1)[1].split()[0])
    return {"peak_rss_mib": measured.peak_rss / 2**20, "seconds": seconds}


# The user tools over an output whose newest run is the night's run, as a user looks at it the morning after.
TOOLS = {
    "report": ["report", "--dest", "{logs}/report-{name}"],
    "query": ["query", "SELECT model, count(*) AS rows FROM results GROUP BY model"],
    "runs": ["runs", "--limit", "20"],
}


def tools_case(name: str, output: Path, env: dict[str, str], logs: Path) -> dict[str, dict[str, float]]:
    """`camray report`, `query` and `runs` over the output, each in a fresh process: peak RSS and wall time."""
    measured_tools: dict[str, dict[str, float]] = {}
    for tool, arguments in TOOLS.items():
        filled = [argument.format(logs=logs, name=name) for argument in arguments]
        command = [sys.executable, "-m", "camray.cli", filled[0], "--output", str(output), *filled[1:]]
        measured = measure_process(command, env, logs / f"{tool}-{name}.log")
        if measured.returncode != 0:
            raise RuntimeError(f"camray {tool} over the {name} output failed; see {logs}/{tool}-{name}.log")
        measured_tools[tool] = {"peak_rss_mib": measured.peak_rss / 2**20, "seconds": measured.seconds}
    return measured_tools


def export_case(name: str, output: Path, env: dict[str, str], logs: Path, cap_bytes: int) -> dict[str, object]:
    dest = logs / f"coco-{name}.json"
    command = [sys.executable, "-m", "camray.cli", "export", "coco", "--output", str(output), "--dest", str(dest)]
    measured = measure_process(command, env, logs / f"export-{name}.log", cap_bytes)
    dest.unlink(missing_ok=True)
    if measured.returncode != 0 and not measured.capped:
        raise RuntimeError(f"export of the {name} output failed ({measured.returncode}); see {logs}")
    return {"peak_rss_mib": measured.peak_rss / 2**20, "seconds": measured.seconds, "capped": measured.capped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history-rows", type=int, default=10_000_000)
    parser.add_argument("--rows-per-file", type=int, default=4096, help="as `sink.rows_per_file` writes them")
    parser.add_argument("--export-small-rows", type=int, default=10_000)
    parser.add_argument("--export-cap-gib", type=float, default=5.0, help="an export above this RSS is stopped")
    parser.add_argument("--repeats", type=int, default=2, help="runs per case, alternated; the best counts")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--masks-rows", type=int, nargs=2, default=[100, 10_000], metavar=("SMALL", "LARGE"))
    parser.add_argument(
        "--only-masks-export", action="store_true", help="the masks export alone: no Ray, no H-row history"
    )
    parser.add_argument("--skip-compacted", action="store_true", help="no case over the history compacted")
    parser.add_argument("--output", default="data/bench-history-results.json")
    args = parser.parse_args(argv)
    if args.only_masks_export:
        return _masks_export_alone(args)

    import ray

    from camray.bench.scale import image_folder
    from camray.config import load_config
    from camray.io.listing import iter_listing
    from camray.io.sources import S3Settings

    images = image_folder(NEW_IMAGES).resolve()
    listed = [
        (uri, version)
        for chunk in iter_listing(str(images), [], True, S3Settings())
        for uri, version in zip(chunk.column("uri").to_pylist(), chunk.column("version").to_pylist(), strict=True)
    ]
    done = sorted(listed)[::2]
    root = Path(tempfile.mkdtemp(prefix="camray-bench-history-"))
    config = load_config(overrides={"source.uri": str(images), "sink.uri": str(root / "out")})
    model, fingerprint = config.model.name, config.fingerprint()
    report: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "history_rows": args.history_rows,
        "rows_per_file": args.rows_per_file,
    }
    # A cluster of its own: with no address, ray.init() joins a cluster another process started on the machine.
    ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    logs = root / "logs"
    logs.mkdir()
    try:
        clock = time.perf_counter()
        fabricate_history(root / "none", 0, done, model, fingerprint, args.rows_per_file, runs=1)
        fabricate_history(root / "full", args.history_rows, done, model, fingerprint, args.rows_per_file)
        report["fabricate_seconds"] = time.perf_counter() - clock
        print(f"fabricated {args.history_rows:,} history rows in {report['fabricate_seconds']:.0f} s", flush=True)
        cases = ["none", "full"]
        if not args.skip_compacted:
            # The same history as `camray optimize` leaves it: a few large files.
            fabricate_history(root / "compacted", args.history_rows, done, model, fingerprint, args.rows_per_file)
            report["optimize"] = optimize(Output(str(root / "compacted")), retention_hours=0).summary()
            cases.append("compacted")
        report["skip_alone"] = {name: skip_alone(name, root / name, images, env, logs) for name in cases}
        # Alternated and repeated, the best of each: the machine is shared, and the first run warms caches.
        repeats: dict[str, list[dict[str, object]]] = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name in cases:
                repeats[name].append(run_case(name, root / name, images, env, logs))
                print(f"  run over the {name} history: {repeats[name][-1]}", flush=True)
        for name in ("none", "full"):
            run_case(name, root / name, images, env, logs, keep=True)
        report["tools"] = {name: tools_case(name, root / name, env, logs) for name in ("none", "full")}
        report["runs"] = {
            name: {
                **min(measured, key=lambda numbers: numbers["seconds"]),
                "peak_driver_rss_mib": min(numbers["peak_driver_rss_mib"] for numbers in measured),
                "all": measured,
            }
            for name, measured in repeats.items()
        }
        if not args.skip_export:
            cap = int(args.export_cap_gib * 2**30)
            fabricate_history(root / "small", args.export_small_rows, [], model, fingerprint, args.rows_per_file, 3)
            report["export"] = {
                "small": export_case("small", root / "small", env, logs, cap),
                "full": export_case("full", root / "full", env, logs, cap),
            }
            report["masks_export"] = masks_export(root, env, logs, *args.masks_rows)
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    _print(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


def _masks_export_alone(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="camray-bench-masks-"))
    logs = root / "logs"
    logs.mkdir()
    report: dict[str, object] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    try:
        report["masks_export"] = masks_export(root, dict(os.environ), logs, *args.masks_rows)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _print_masks_export(report["masks_export"])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")
    return 0


def _print_masks_export(numbers: dict) -> None:
    small, large = numbers["small"], numbers["large"]
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    verdict = "met" if ratio <= EXPORT_RATIO else "MISSED"
    print(
        f"  camray export masks peak: {small['peak_rss_mib']:.0f} MiB over {small['rows']:,} rows "
        f"({small['seconds']:.1f} s), {large['peak_rss_mib']:.0f} MiB over {large['rows']:,} ({large['seconds']:.1f} "
        f"s, {large['files']:,} PNGs): {ratio:.2f}x (target <= {EXPORT_RATIO}: {verdict})"
    )


def _print(report: dict) -> None:
    runs, rows = report["runs"], report["history_rows"]
    none, full = runs["none"], runs["full"]
    ratio = full["peak_driver_rss_mib"] / none["peak_driver_rss_mib"]
    added = full["seconds"] - none["seconds"]
    per_10m = added * 10_000_000 / rows if rows else 0.0
    print(f"\nrun over {NEW_IMAGES} new images, half already done ({report['machine']}):")
    print(f"  {'history rows':>14} {'driver peak MiB':>16} {'wall s':>8} {'skipped':>8} {'processed':>10}")
    for name, count in (("none", 0), ("full", rows), ("compacted", rows)):
        if name in runs:
            numbers = runs[name]
            print(
                f"  {count:>14,d} {numbers['peak_driver_rss_mib']:>16.0f} {numbers['seconds']:>8.1f} "
                f"{numbers['skipped']:>8d} {numbers['processed']:>10d}  {name}"
            )
    verdict = "met" if ratio <= DRIVER_RATIO else "MISSED"
    alone = report["skip_alone"]
    print(
        f"  the skip step alone: {alone['none']['seconds']:.1f} s, peak {alone['none']['peak_rss_mib']:.0f} MiB "
        f"with none; {alone['full']['seconds']:.1f} s, peak {alone['full']['peak_rss_mib']:.0f} MiB with {rows:,}"
    )
    print(f"  driver peak ratio {ratio:.2f} (target <= {DRIVER_RATIO}: {verdict})")
    if "compacted" in runs:
        compacted = runs["compacted"]["peak_driver_rss_mib"] / none["peak_driver_rss_mib"]
        verdict = "met" if compacted <= DRIVER_RATIO else "MISSED"
        print(
            f"  compacted ({report['optimize']}): skip step alone {alone['compacted']['seconds']:.1f} s, peak "
            f"{alone['compacted']['peak_rss_mib']:.0f} MiB; driver peak ratio {compacted:.2f} "
            f"(target <= {DRIVER_RATIO}: {verdict})"
        )
    verdict = "met" if per_10m <= SECONDS_PER_10M else "MISSED"
    print(f"  added wall time {added:.1f} s = {per_10m:.1f} s per 10 M rows (target <= {SECONDS_PER_10M}: {verdict})")
    tools = report.get("tools")
    if tools:
        print("  the user tools the morning after, with none and with the whole history (peak MiB, s):")
        for tool in TOOLS:
            none_tool, full_tool = tools["none"][tool], tools["full"][tool]
            print(
                f"    camray {tool:<7} {none_tool['peak_rss_mib']:>6.0f} MiB {none_tool['seconds']:>5.1f} s"
                f"   {full_tool['peak_rss_mib']:>6.0f} MiB {full_tool['seconds']:>5.1f} s"
                f"   {full_tool['peak_rss_mib'] / none_tool['peak_rss_mib']:.2f}x"
            )
    if "export" in report:
        small, big = report["export"]["small"], report["export"]["full"]
        export_ratio = big["peak_rss_mib"] / small["peak_rss_mib"]
        note = " (stopped at the cap: the ratio is a lower bound)" if big["capped"] else ""
        verdict = "met" if export_ratio <= EXPORT_RATIO and not big["capped"] else "MISSED"
        print(
            f"  camray export coco peak: {small['peak_rss_mib']:.0f} MiB over 10,000 rows, {big['peak_rss_mib']:.0f} "
            f"MiB over {rows:,}: {export_ratio:.2f}x{note} (target <= {EXPORT_RATIO}: {verdict})"
        )
    if "masks_export" in report:
        _print_masks_export(report["masks_export"])


if __name__ == "__main__":
    raise SystemExit(main())
