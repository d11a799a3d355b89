"""Presets: values under the user's own, recorded through the resolved config and its fingerprint."""

from __future__ import annotations

import pytest

from camray.cli import build_parser, overrides_from_args
from camray.config import ConfigError, JobConfig, load_config
from camray.presets import PRESETS, apply_preset, preset_values


def _field(config: JobConfig, section: str, name: str):
    return getattr(getattr(config, section), name)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_sets_its_values(name: str) -> None:
    config = load_config(preset=name)
    for section, fields in PRESETS[name].items():
        for field, value in fields.items():
            assert _field(config, section, field) == value, f"{section}.{field}"


def test_balanced_is_the_default_fast_the_plain_fields_and_accurate_tiles() -> None:
    assert load_config() == load_config(preset="balanced") != JobConfig()
    assert load_config().cam.refine and load_config().boxes.threshold == 0.25
    assert load_config(preset="fast") == JobConfig()
    assert load_config(preset="fast").fingerprint() == JobConfig().fingerprint()
    assert load_config().fingerprint() != JobConfig().fingerprint()
    accurate = load_config(preset="accurate")
    assert accurate.tiling.enabled
    assert accurate.fingerprint() != JobConfig().fingerprint()
    assert len({load_config(preset=name).fingerprint() for name in PRESETS}) == len(PRESETS)


def test_file_and_flags_override_the_preset(tmp_path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("preset: accurate\nboxes:\n  threshold: 0.33\n")
    from_file = load_config(path)
    assert from_file.tiling.enabled and from_file.boxes.threshold == 0.33
    flagged = load_config(path, {"tiling.grid": 4, "boxes.threshold": 0.5})
    assert flagged.tiling.grid == 4 and flagged.boxes.threshold == 0.5
    # The argument names the preset over the file's key.
    assert load_config(path, preset="fast").tiling.enabled is False
    # A file that names none gets the default's values under its own.
    path.write_text("boxes:\n  threshold: 0.33\n")
    assert load_config(path).cam.refine and load_config(path).boxes.threshold == 0.33


def test_cli_flag_reaches_the_config() -> None:
    args = build_parser().parse_args(["--preset", "accurate", "--boxes.threshold", "0.45"])
    config = load_config(args.config, overrides_from_args(args), args.preset)
    assert config.tiling.enabled and config.boxes.threshold == 0.45
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--preset", "fastest"])


def test_unknown_preset_names_the_field(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"preset: `preset` 'fastest' is unknown; choose one of fast"):
        load_config(preset="fastest")
    path = tmp_path / "job.yaml"
    path.write_text("preset: 3\n")
    with pytest.raises(ConfigError, match="must be a string"):
        load_config(path)


def test_fingerprint_follows_the_values_a_preset_sets(monkeypatch) -> None:
    before = load_config(preset="accurate").fingerprint()
    changed = {**PRESETS["accurate"], "tiling": {**PRESETS["accurate"].get("tiling", {}), "overlap": 0.4}}
    monkeypatch.setitem(PRESETS, "accurate", changed)
    assert load_config(preset="accurate").fingerprint() != before


def test_apply_preset_keeps_the_user_sections_and_copies() -> None:
    merged = apply_preset("accurate", {"boxes": {"threshold": 0.9}, "sink": {"uri": "out"}})
    assert merged["boxes"]["threshold"] == 0.9 and merged["sink"] == {"uri": "out"}
    preset_values("accurate")["tiling"]["grid"] = 99
    assert PRESETS["accurate"]["tiling"].get("grid") != 99
