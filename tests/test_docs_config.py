"""docs/configuration.md is what `python -m camray.docs_config` generates from `JobConfig`, and it documents every
field the job accepts, the way tests/outputs/test_athena.py holds docs/athena.sql to the schema."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from pydantic import BaseModel

from camray import config
from camray.cli import build_parser
from camray.config import JobConfig
from camray.docs_config import render
from camray.presets import PRESETS

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "configuration.md"


def _leaf_fields(prefix: str, model: type[BaseModel]):
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _leaf_fields(f"{prefix}{name}.", field.annotation)
        else:
            yield f"{prefix}{name}", field


def test_documented_configuration_is_the_generated_one():
    generated = render()
    if os.environ.get("CAMRAY_UPDATE_DOCS") == "1":
        DOCS.write_text(generated)
    assert DOCS.read_text() == generated, (
        "docs/configuration.md is stale: python -m camray.docs_config > docs/configuration.md"
    )


def test_every_field_has_a_description():
    undocumented = [name for name, field in _leaf_fields("", JobConfig) if not (field.description or "").strip()]
    assert not undocumented, f"add Field(description=...) in camray/config.py for {undocumented}"


def test_every_run_flag_has_a_row_and_every_row_a_flag():
    flags = {action.dest for action in build_parser()._actions if "." in action.dest and action.option_strings}
    rows = set(re.findall(r"^\| `([a-z_]+\.[a-z_0-9.]+)` \|", DOCS.read_text(), re.M))
    renamed = getattr(config, "DEPRECATED_FIELDS", {})  # old spellings: a flag each, and a row of their own table
    assert rows == {name for name, _ in _leaf_fields("", JobConfig)} | set(renamed)
    assert flags == rows


def test_documented_defaults_read_back_as_the_defaults():
    """Each default cell, read as YAML the way a flag's value is, is the field's default."""
    text = DOCS.read_text()
    defaults = JobConfig().model_dump()
    for name, _ in _leaf_fields("", JobConfig):
        section, field = name.split(".", 1)
        cell = re.search(rf"^\| `{re.escape(name)}` \| [^|]* \| `([^`]*)` \|", text, re.M)
        assert cell, name
        assert yaml.safe_load(cell.group(1)) == defaults[section][field], name


def test_documented_presets_are_the_code_ones():
    text = DOCS.read_text()
    for preset, sections in PRESETS.items():
        row = re.search(rf"^\| `{preset}`(?: \(the default\))? \| (.*) \|$", text, re.M)
        assert row, preset
        for section, fields in sections.items():
            for field in fields:
                assert f"`{section}.{field}: " in row.group(1), (preset, section, field)


def test_check_flag_exits_1_on_a_stale_file_and_0_on_the_current_one(tmp_path):
    stale = tmp_path / "configuration.md"
    stale.write_text(DOCS.read_text().replace("| `cam.top_k` |", "| `cam.topk` |"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "camray.docs_config", "--check"]
    failed = subprocess.run([*command, str(stale)], env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "is stale" in failed.stderr
    current = subprocess.run([*command, str(DOCS)], env=env, capture_output=True, text=True, timeout=120)
    assert current.returncode == 0, current.stderr
