"""Command line of the batch job: config file, shortcuts, and a `--section.field` flag for every field."""

from __future__ import annotations

import argparse
import logging
from typing import Any

import pyarrow.parquet as pq
import yaml

from pipeline.config import ConfigError, JobConfig, load_config
from pipeline.io.sources import S3Settings, filesystem_for
from pipeline.presets import PRESETS
from pipeline.runner import RunSummary, run_job

logger = logging.getLogger("camray")

SHORTCUTS = {
    "input": ("source.uri", "input folder, s3://bucket/prefix or manifest (source.uri)"),
    "output": ("sink.uri", "output folder or s3://bucket/prefix (sink.uri)"),
    "model": ("model.name", "classifier name (model.name)"),
    "weights": ("model.weights", "weights file, s3:// URI or torchvision:NAME (model.weights)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cam_batch.py",
        description="Top-k predictions, class activation maps, boxes and pseudo-masks for a set of images, "
        "written as Parquet. Values of --section.field flags are parsed as YAML (5, true, [a, b]).",
    )
    parser.add_argument("--config", help="YAML job config; flags override its fields")
    parser.add_argument("--preset", choices=list(PRESETS), help="named settings under the config's and flags'")
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
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for key, value in vars(args).items():
        if value is None or key in ("config", "preset"):
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
    s3 = S3Settings(config.source.s3_endpoint_url, config.source.s3_region)
    fs, path = filesystem_for(summary.result_files[0], s3)
    table = pq.read_table(path, filesystem=fs, columns=["image_uri", "predictions", "boxes"])
    for row in table.slice(0, examples).to_pylist():
        top = row["predictions"][0]
        line = f"  {row['image_uri'].rsplit('/', 1)[-1]}: {top['label']} ({top['score']:.2f})"
        if row["boxes"]:
            box = row["boxes"][0]
            line += f", box [{box['x0']:.0f}, {box['y0']:.0f}, {box['x1']:.0f}, {box['y1']:.0f}] {box['label']}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, overrides_from_args(args), args.preset)
    except ConfigError as exc:
        print(exc)
        return 2
    try:
        summary = run_job(config)
    except ValueError as exc:  # setup errors (model, layers, method) carry a message naming the field
        print(f"camray: {exc}")
        return 2
    print_summary(summary, config)
    return 0 if summary.status == "succeeded" else 1
