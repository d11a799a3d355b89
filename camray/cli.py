"""Command line of the batch job: config file, shortcuts, and a `--section.field` flag for every field."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import shutil
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq
import yaml

from camray.config import DEPRECATED_FIELDS, ConfigError, JobConfig, load_config
from camray.errors import LeaseHeld, SetupError, UsageError
from camray.io.s3 import StoreUnavailableError
from camray.io.sources import S3Settings, filesystem_for
from camray.presets import PRESETS

if TYPE_CHECKING:  # the runner loads Ray and torch: seconds that `camray runs | report | query | export` skip
    from camray.runner import RunSummary

logger = logging.getLogger("camray")

SHORTCUTS = {
    "input": ("source.uri", "input folder, s3://bucket/prefix or manifest (source.uri)"),
    "output": ("sink.uri", "output folder or s3://bucket/prefix (sink.uri)"),
    "model": ("model.name", "classifier name (model.name)"),
    "weights": ("model.weights", "weights file, s3:// URI or torchvision:NAME (model.weights)"),
}


def build_parser(prog: str = "cam_batch.py") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Top-k predictions, class activation maps, boxes and pseudo-masks for a set of images, "
        "written as Parquet. Values of --section.field flags are parsed as YAML (5, true, [a, b]).",
        epilog=f"example:\n  {prog} --input s3://my-images/incoming/ --output s3://my-annotations/cam/ "
        f"--cam.top_k 3\n\n{EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML job config; flags override its fields")
    parser.add_argument(
        "--wait-for-lease",
        dest="sink.wait_for_lease",
        metavar="SECONDS",
        help="wait this long for another run's lease on the output instead of exiting with status 3",
    )
    parser.add_argument("--preset", choices=list(PRESETS), help="named settings under the config's and flags'")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="on failure, print the traceback too (a run's log under the output's _logs/ always holds it)",
    )
    for flag, (_, help_text) in SHORTCUTS.items():
        parser.add_argument(f"--{flag}", help=help_text)
    for section_name, section_field in JobConfig.model_fields.items():
        group = parser.add_argument_group(section_name)
        for field_name, field in section_field.annotation.model_fields.items():
            group.add_argument(
                f"--{section_name}.{field_name}",
                dest=f"{section_name}.{field_name}",
                metavar="VALUE",
                help=field.description,
            )
    for old in DEPRECATED_FIELDS:  # still read, with a warning naming the new flag; no longer shown
        parser.add_argument(f"--{old}", dest=old, metavar="VALUE", help=argparse.SUPPRESS)
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for key, value in vars(args).items():
        if value is None or key in ("config", "preset", "verbose"):
            continue
        if key in SHORTCUTS:
            overrides[SHORTCUTS[key][0]] = value
        else:
            overrides[key] = yaml.safe_load(value) if isinstance(value, str) else value
    return overrides


def print_summary(summary: RunSummary, config: JobConfig, examples: int = 5) -> None:
    print(
        f"camray run {summary.run_id} {summary.status}: {summary.listed} listed, {summary.skipped} skipped "
        f"(already done), {summary.results} results, {summary.errors} errors, "
        f"{summary.images_per_second:.1f} images/s over {summary.seconds:.1f} s; output in {summary.output_uri}"
    )
    if not summary.result_files:
        return
    s3 = S3Settings(config.storage.s3_endpoint_url, config.storage.s3_region)
    fs, path = filesystem_for(summary.result_files[0], s3)
    table = pq.read_table(path, filesystem=fs, columns=["image_uri", "predictions", "boxes"])
    for row in table.slice(0, examples).to_pylist():
        top = row["predictions"][0]
        line = f"  {row['image_uri'].rsplit('/', 1)[-1]}: {top['label']} ({top['score']:.2f})"
        if row["boxes"]:
            box = row["boxes"][0]
            line += f", box [{box['x0']:.0f}, {box['y0']:.0f}, {box['x1']:.0f}, {box['y1']:.0f}] {box['label']}"
        print(line)


def main(argv: list[str] | None = None, prog: str = "cam_batch.py") -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser(prog).parse_args(argv)
    try:
        config = load_config(args.config, overrides_from_args(args), args.preset)
    except ConfigError as exc:
        return _refused(exc, args.verbose, str(exc), 2)
    # Ray and torch only once the config is valid: a bad one is refused in a second, not after their imports.
    from camray.logs import run_output
    from camray.runner import RunInterrupted, failure_message, run_job

    try:
        with run_output():  # Ray's lines go to the run's log; the terminal shows progress, then the summary
            summary = run_job(config)
    except LeaseHeld as exc:
        return _refused(exc, args.verbose, f"camray: {exc}", 3)
    except RunInterrupted as exc:
        message = f"camray: run interrupted ({exc}); the work done so far is kept and the next run resumes it"
        return _refused(exc, args.verbose, message, 1)
    except SetupError as exc:  # the model, a layer, the method, the endpoint, the input: the message names it
        return _refused(exc, args.verbose, f"camray: {exc}", 2)
    except StoreUnavailableError as exc:  # names the endpoint and the operation
        return _refused(exc, args.verbose, f"camray: {exc}", 1)
    except Exception as exc:  # anything else failed the run (its runs row says so too): exit 1, its own message
        return _refused(exc, args.verbose, f"camray: run failed: {failure_message(exc)}", 1)
    print_summary(summary, config)
    return 0 if summary.status == "succeeded" else 1


def _refused(exc: BaseException, verbose: bool, message: str, status: int) -> int:
    """Says why on stderr; the traceback only with --verbose (a run that took the output's lease left it in its
    log under `_logs/` too)."""
    if verbose:
        traceback.print_exception(exc)
    print(message, file=sys.stderr)
    return status


# ---------------------------------------------------------------------------------------------------------------
# `camray`: one console script, verbs as subcommands. `camray run` is `python jobs/cam_batch.py`; the others read
# an output (local or s3://) through the same S3 settings as the job.

# Rows a streamed `camray query` result is fetched in.
QUERY_BATCH_ROWS = 4096

EXIT_CODES = """exit status: 0 done; 1 the run failed or is incomplete, or the output is missing or unreadable;
2 bad usage, config, run id or SQL; 3 the output is leased by another run (camray run, migrate, optimize)."""

EXAMPLES = {
    "run": "camray run --input s3://my-images/incoming/ --output s3://my-annotations/cam/",
    "runs": "camray runs --output s3://my-annotations/cam/ --limit 5",
    "report": "camray report --output output --dest output/report && xdg-open output/report/index.html",
    "query": 'camray query --output output "SELECT label, count(*) AS images FROM predictions WHERE rank = 1 '
    'GROUP BY label ORDER BY images DESC"',
    "export coco": "camray export coco --output output --min-score 0.2 --dest output/coco.json",
    "export yolo": "camray export yolo --output output --classes 'Egyptian cat' tabby --dest output/yolo",
    "export masks": "camray export masks --output output --dest output/masks",
    "migrate": "camray migrate --output s3://my-annotations/cam/",
    "optimize": "camray optimize --output s3://my-annotations/cam/ --retention-hours 168",
}


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _common(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--output", required=True, metavar="URI", help="the job's output: a folder or s3://bucket/prefix")
    sub.add_argument("--s3-endpoint-url", metavar="URL", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    sub.add_argument("--s3-region", metavar="REGION", help="S3 region (default: the AWS chain)")
    sub.add_argument("--verbose", action="store_true", help="tracebacks and progress logs")


def _subparser(subparsers: Any, name: str, help_text: str, example_key: str | None = None) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {EXAMPLES[example_key or name]}\n\n{EXIT_CODES}",
        formatter_class=_formatter,
    )


def _filters(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--run", metavar="RUN_ID", help="one run (default: the newest row of each image, succeeded runs)")
    sub.add_argument(
        "--min-score",
        type=float,
        metavar="S",
        help="keep boxes with score >= S (default: the calibrated score, at which half the boxes kept are right on "
        "the evaluation set; 0 keeps every box)",
    )
    sub.add_argument("--classes", nargs="+", metavar="CLASS", help="keep boxes of these class ids or labels")


def build_camray_parser() -> argparse.ArgumentParser:
    from camray.outputs.query import QUERY_MEMORY_LIMIT

    parser = argparse.ArgumentParser(
        prog="camray",
        description="Class activation maps on Ray: run the job; look at, query and export its output; keep it.",
        epilog="examples:\n" + "\n".join(f"  {example}" for example in EXAMPLES.values()) + f"\n\n{EXIT_CODES}",
        formatter_class=_formatter,
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="{run,runs,report,query,export,migrate,optimize}", required=True
    )
    # `camray run ARGS` is handed to `main` whole (see main_camray); listed here for `camray --help`.
    subparsers.add_parser("run", help="run the job (the same as python jobs/cam_batch.py; camray run --help)")

    runs = _subparser(subparsers, "runs", "list the last runs of an output, newest first")
    _common(runs)
    runs.add_argument("--limit", type=int, default=20, metavar="N", help="runs shown (default 20)")
    runs.add_argument("--format", choices=("table", "csv", "json"), default="table")

    report = _subparser(subparsers, "report", "write a static HTML report of a run: open DEST/index.html from disk")
    _common(report)
    report.add_argument("--run", metavar="RUN_ID", help="the run (default: the newest succeeded run)")
    report.add_argument("--limit", type=int, default=24, metavar="N", help="images in the gallery (default 24)")
    report.add_argument("--dest", required=True, metavar="DIR", help="folder to write index.html and images/ into")

    query = _subparser(subparsers, "query", "run SQL (DuckDB) over views results, errors, runs, predictions, boxes")
    _common(query)
    query.add_argument("sql", nargs="?", metavar="SQL", help="one DuckDB SQL statement")
    query.add_argument("--all-runs", action="store_true", help="include rows of failed and incomplete runs")
    query.add_argument(
        "--memory-limit",
        default=QUERY_MEMORY_LIMIT,
        metavar="SIZE",
        help=f"DuckDB's working memory; joins, aggregates and sorts spill beyond it (default {QUERY_MEMORY_LIMIT})",
    )
    query.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    query.add_argument("--dest", metavar="FILE", help="write the result here (needed for parquet; default stdout)")
    query.add_argument("--max-rows", type=int, default=50, metavar="N", help="rows printed as a table (default 50)")
    query.add_argument(
        "--athena-ddl", action="store_true", help="print Athena/Glue CREATE EXTERNAL TABLE statements for the output"
    )

    migrate = _subparser(subparsers, "migrate", "convert a Parquet output to Delta tables, in place or beside it")
    _common(migrate)
    migrate.add_argument("--dest", metavar="URI", help="write the Delta tables here instead (an empty location)")
    migrate.add_argument(
        "--wait-for-lease", type=float, default=0.0, metavar="SECONDS", help="wait this long for a run's lease"
    )

    optimize = _subparser(
        subparsers, "optimize", "compact a Delta output's small files and vacuum old ones, under its lease"
    )
    _common(optimize)
    optimize.add_argument(
        "--target-size-mib", type=float, default=128.0, metavar="MIB", help="size of a compacted file (default 128)"
    )
    optimize.add_argument(
        "--retention-hours",
        type=float,
        default=168.0,
        metavar="HOURS",
        help="vacuum unreferenced files older than this; newer ones keep time travel (default 168, a week)",
    )
    optimize.add_argument(
        "--wait-for-lease",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="wait this long for a running night's lease (default 3600)",
    )

    export = subparsers.add_parser(
        "export",
        help="write the boxes as COCO instances JSON or YOLO labels, the label maps as VOC-style PNGs",
        formatter_class=_formatter,
    )
    formats = export.add_subparsers(dest="format", metavar="{coco,yolo,masks}", required=True)
    coco = _subparser(formats, "coco", "COCO instances JSON: images, categories, annotations (+ RLE)", "export coco")
    _common(coco)
    _filters(coco)
    coco.add_argument("--dest", required=True, metavar="FILE.json", help="the JSON file to write")
    yolo = _subparser(formats, "yolo", "YOLO labels: one class cx cy w h file per image, classes.txt", "export yolo")
    _common(yolo)
    _filters(yolo)
    yolo.add_argument("--dest", required=True, metavar="DIR", help="folder for labels/, classes.txt, images.txt")
    masks = _subparser(
        formats,
        "masks",
        "label maps: one indexed PNG per image, VOC's palette, values the lines of classes.txt",
        "export masks",
    )
    _common(masks)
    masks.add_argument(
        "--run", metavar="RUN_ID", help="one run (default: the newest row of each image, succeeded runs)"
    )
    masks.add_argument(
        "--classes", nargs="+", metavar="CLASS", help="export these class ids or labels (the others' pixels: 255)"
    )
    masks.add_argument(
        "--dest", required=True, metavar="DIR", help="folder for SegmentationClass/, classes.txt, images.txt"
    )
    return parser


def _output(args: argparse.Namespace, uri: str | None = None):
    from camray.io.output import Output

    return Output(uri or args.output, S3Settings(args.s3_endpoint_url, args.s3_region))


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _print_table(table: Any, fmt: str, dest: str | None = None, more_rows: bool = False) -> None:
    """`table` (pyarrow) as aligned text, CSV (nested values as text, as DuckDB writes them) or JSON."""
    from camray.outputs.terminal import format_table

    if fmt == "table":
        print(format_table(table, more_rows))
    elif fmt == "csv":
        from camray.io.bounded_duckdb import bounded_duckdb
        from camray.io.output import DUCKDB_MEMORY_LIMIT

        with bounded_duckdb(DUCKDB_MEMORY_LIMIT) as con:
            _write_csv(con.from_arrow(table), dest)
    else:
        _write_json(table.to_batches(), dest)


def _write_csv(relation: Any, dest: str | None) -> None:
    """A DuckDB relation as CSV to `dest` or stdout; DuckDB writes it as the query runs, never whole in memory."""
    with tempfile.TemporaryDirectory() as folder:
        path = dest or f"{folder}/table.csv"
        relation.write_csv(path)
        if dest is None:
            with open(path, "rb") as handle:
                sys.stdout.flush()
                shutil.copyfileobj(handle, sys.stdout.buffer)
                sys.stdout.buffer.flush()


def _write_json(batches: Iterable[Any], dest: str | None) -> None:
    """Record batches as one JSON array of objects (indented by one space), written batch by batch: the same text
    as `json.dumps(rows, indent=1)` of all the rows, without holding them."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(dest, "w")) if dest else sys.stdout
        written = 0
        for batch in batches:
            for row in batch.to_pylist():
                text = json.dumps(row, default=_json_value, indent=1).replace("\n", "\n ")
                out.write(("[\n " if not written else ",\n ") + text)
                written += 1
        out.write("\n]\n" if written else "[]\n")


def _cmd_runs(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc

    output = _output(args)
    output.check_exists()
    runs = output.runs().slice(0, max(0, args.limit))
    if args.format == "table":
        if "images_per_second" not in runs.column_names:  # schema 1 runs rows: derived from what they have
            done = pc.add(runs.column("results"), runs.column("errors"))
            runs = runs.append_column("images_per_second", pc.divide(pc.cast(done, "float64"), runs.column("seconds")))
        wanted = ["run_id", "status", "started_at", "seconds", "listed", "skipped", "results", "errors"]
        wanted += ["images_per_second", "model", "attempt", "camray_version", "git_commit", "message", "stats_uri"]
        runs = runs.select([name for name in wanted if name in runs.column_names])
    _print_table(runs, args.format)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from camray.outputs.report import write_report

    index = write_report(_output(args), args.dest, args.run, args.limit)
    print(f"report: {index.resolve()}")
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from camray.outputs.athena import create_tables
    from camray.outputs.query import connect

    if args.athena_ddl:  # a new output will be Delta tables, as runs make them by default
        output = _output(args)
        print(create_tables(args.output, delta=output.is_delta or not output.format.has_tables()), end="")
        return 0
    import duckdb

    if not args.sql:
        raise UsageError('give one SQL statement, e.g. camray query --output output "SELECT * FROM runs"')
    if args.format == "parquet" and not args.dest:
        raise UsageError("--format parquet needs --dest FILE")
    with tempfile.TemporaryDirectory(prefix="camray-query-") as spill:
        con = connect(_output(args), all_runs=args.all_runs, memory_limit=args.memory_limit, spill_folder=spill)
        try:
            relation = con.sql(args.sql.strip().rstrip(";"))
        except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException) as exc:
            raise UsageError(str(exc)) from exc  # SQL that does not parse, or names what is not there
        if relation is None:  # a statement without a result (e.g. CREATE VIEW): nothing to print
            return 0
        if args.format == "table":
            table = relation.limit(args.max_rows + 1).to_arrow_table()
            _print_table(table.slice(0, args.max_rows), "table", more_rows=table.num_rows > args.max_rows)
        elif args.format == "parquet":
            relation.write_parquet(args.dest)
        elif args.format == "csv":
            _write_csv(relation, args.dest)
        else:  # streamed: a query's result may be far larger than memory
            _write_json(relation.to_arrow_reader(QUERY_BATCH_ROWS), args.dest)
        con.close()
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from camray.outputs.export import DEFAULT_MIN_SCORE, write_coco, write_yolo

    if args.format == "masks":
        from camray.outputs.mask_export import write_masks

        path = write_masks(_output(args), args.dest, run_id=args.run, classes=args.classes)
        print(f"masks: {path.resolve()}")
        return 0
    min_score = DEFAULT_MIN_SCORE if args.min_score is None else args.min_score
    options = {"run_id": args.run, "min_score": min_score, "classes": args.classes}
    writer = write_coco if args.format == "coco" else write_yolo
    path = writer(_output(args), args.dest, **options)
    print(f"{args.format}: {path.resolve()}")
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from camray.io.migrate import migrate

    dest = _output(args, args.dest) if args.dest else None
    print(migrate(_output(args), dest, wait_for_lease=args.wait_for_lease).summary())
    return 0


def _cmd_optimize(args: argparse.Namespace) -> int:
    from camray.io.optimize import optimize

    if args.target_size_mib <= 0:
        raise UsageError(f"--target-size-mib must be > 0, not {args.target_size_mib}")
    upkeep = optimize(
        _output(args),
        target_bytes=int(args.target_size_mib * 2**20),
        retention_hours=args.retention_hours,
        wait_for_lease=args.wait_for_lease,
    )
    print(upkeep.summary())
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "runs": _cmd_runs,
    "report": _cmd_report,
    "query": _cmd_query,
    "export": _cmd_export,
    "migrate": _cmd_migrate,
    "optimize": _cmd_optimize,
}


def _exit_status(exc: BaseException) -> int:
    """Bad usage, bad values, an unknown run and bad SQL are the user's to fix (2, camray's `SetupError`s); a lease
    another run holds is 3 (`migrate`, `optimize`); an output that is missing or cannot be read, and anything else,
    mean the work failed (1)."""
    if isinstance(exc, LeaseHeld):
        return 3
    return 2 if isinstance(exc, SetupError) else 1


def main_camray(argv: list[str] | None = None) -> int:
    """The `camray` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        return main(argv[1:], prog="camray run")
    args = build_camray_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    name = f"camray {args.command}" + (f" {args.format}" if args.command == "export" else "")
    try:
        return COMMANDS[args.command](args)
    except Exception as exc:  # one line to stderr; the traceback only on request
        if args.verbose:
            traceback.print_exc()
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"{name}: error: {message}", file=sys.stderr)
        return _exit_status(exc)


if __name__ == "__main__":
    sys.exit(main_camray())
