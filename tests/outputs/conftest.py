"""Fixtures of the output tools' tests: a small evaluation set, and the inputs of a real run over it."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules beside the tests

# One pasted composite per object (texture, scale index) beside the five hand-boxed photos: ten images that
# cover every object, texture and several canvas shapes, small enough for a run of a few seconds.
PASTES = ("cat_grass_1", "coffee_gravel_2", "motorbike_brick_0", "rocket_hubble_deep_field_1", "officer_grass_2")


@pytest.fixture(scope="session")
def evalset(built_evalset, tmp_path_factory) -> tuple[list[Path], Path]:
    """Ten evaluation images and their truth CSV (the subset of `camray.evaluation.evalset.build`)."""
    from camray.evaluation.evalset import OBJECTS

    truth = built_evalset
    full = truth.parent
    wanted = {f"photo_{name}.png" for name in OBJECTS} | {f"paste_{name}.png" for name in PASTES}
    subset = tmp_path_factory.mktemp("evalset")
    with truth.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["file"] in wanted]
    assert {row["file"] for row in rows} == wanted
    with (subset / "truth.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    images = []
    for name in sorted(wanted):
        shutil.copy(full / "images" / name, subset / name)
        images.append(subset / name)
    return images, subset / "truth.csv"
