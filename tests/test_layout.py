"""The tree's layering rules are import-linter contracts in pyproject.toml; `lint-imports` checks them.

- Pure compute (`camray.cam`, `camray.image.decode`) loads nothing of Ray, S3 or `camray.io`, not even
  through another camray module.
- `camray.io` imports nothing from `camray.models` or `camray.cam`.
- No import cycles between sibling modules or packages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    # `--no-cache`: a cache written for the real tree must not answer for a changed copy.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _contract_names() -> list[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    return [contract["name"] for contract in config["contracts"]]


def test_the_tree_keeps_its_import_contracts():
    checked = _lint_imports(REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for name in _contract_names():
        assert f"{name} KEPT" in checked.stdout


@pytest.mark.parametrize(
    ("module", "added_import", "contract"),
    [
        # Indirect: the pure module imports a camray module that imports Ray.
        ("cam/maps.py", "import camray.reader", "Pure compute (cam, image decoding) loads nothing of Ray"),
        ("image/decode.py", "import boto3", "Pure compute (cam, image decoding) loads nothing of Ray"),
        ("io/schema.py", "from camray.models import registry", "IO knows nothing of models or CAM"),
        ("cam/maps.py", "import camray.predictor", "No import cycles between sibling modules or packages"),
    ],
)
def test_a_broken_rule_fails_the_check(tmp_path, module, added_import, contract):
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(REPO / "camray", tmp_path / "camray", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "camray" / module
    target.write_text(target.read_text() + f"\n{added_import}\n")
    checked = _lint_imports(tmp_path)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    broken = [name for name in _contract_names() if f"{name} BROKEN" in checked.stdout]
    assert any(name.startswith(contract) for name in broken), checked.stdout
