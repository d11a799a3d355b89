"""A weights file is data, never code: every load is `weights_only=True`, and `model.weights_sha256` is checked
before anything is unpickled. The payloads are real pickles that run a command when loaded unsafely."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch
import torchvision

from camray.config import ModelConfig
from camray.io.sources import S3Settings
from camray.models import WeightsError, resolve_setup
from camray.models.weights import load_weights_file, sha256_of

REPO = Path(__file__).resolve().parents[2]
# Calls that unpickle a file; each must say `weights_only=True`. torch.hub's loaders default to False.
UNPICKLING_CALLS = ("load", "load_state_dict_from_url", "get_state_dict")


class _Payload:
    """Pickles as a call to `os.system`: loading it with `weights_only=False` runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _malicious_weights(tmp_path: Path, name: str = "evil.pth") -> tuple[Path, Path]:
    """A checkpoint that looks like a state dict and creates a marker file when unpickled unsafely."""
    marker = tmp_path / f"{name}.was-unpickled"
    path = tmp_path / name
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": _Payload(f"touch {marker}")}, path)
    return path, marker


def test_the_payload_is_real_when_loaded_unsafely(tmp_path):
    """Control: without `weights_only`, the file runs its command (so the tests below can fail)."""
    path, marker = _malicious_weights(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_malicious_pickle_is_refused(tmp_path):
    path, marker = _malicious_weights(tmp_path)
    with pytest.raises(WeightsError, match="could not be loaded as a state dict"):
        load_weights_file(str(path), S3Settings())
    assert not marker.exists()


def test_a_sha256_mismatch_is_refused_before_unpickling(tmp_path):
    """With the wrong digest the error is the digest's, not the unpickler's: the check ran first."""
    path, marker = _malicious_weights(tmp_path)
    with pytest.raises(WeightsError, match="expected 0{64} .`model.weights_sha256`"):
        load_weights_file(str(path), S3Settings(), expected_sha256="0" * 64)
    assert not marker.exists()


def test_torchvision_weights_are_checked_before_unpickling(tmp_path, monkeypatch):
    """`torchvision:NAME` weights go through the same check: a tampered file in torch.hub's cache is refused
    by its digest, and with no digest configured, by `weights_only`."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    path, marker = _malicious_weights(checkpoints, Path(url).name)
    with pytest.raises(WeightsError, match="`model.weights_sha256`"):
        resolve_setup(ModelConfig(name="resnet18", weights="torchvision:DEFAULT", weights_sha256="1" * 64))
    with pytest.raises(WeightsError, match="could not be loaded as a state dict"):
        resolve_setup(ModelConfig(name="resnet18", weights="torchvision:DEFAULT"))
    assert not marker.exists()
    # The genuine file format loads through the same path, its digest recorded.
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    loaded = resolve_setup(ModelConfig(name="resnet18", weights_sha256=sha256_of(path)))
    assert (loaded.weights_source, loaded.weights_sha256) == ("torchvision:DEFAULT", sha256_of(path))


def _unsafe_loads(tree: ast.AST) -> list[str]:
    """Calls that unpickle without `weights_only=True`: `torch.load`, torch.hub's `load_state_dict_from_url`
    and torchvision's `get_state_dict` (both default to `weights_only=False`). Returns `line: call` for each,
    and counts the safe ones as `ok`."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        receiver = ast.unparse(func.value) if isinstance(func, ast.Attribute) else ""
        if not (name in ("load_state_dict_from_url", "get_state_dict") or (name == "load" and receiver == "torch")):
            continue
        flag = next((kw.value for kw in node.keywords if kw.arg == "weights_only"), None)
        safe = isinstance(flag, ast.Constant) and flag.value is True
        found.append("ok" if safe else f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_every_unpickling_call_in_the_code_says_weights_only():
    """Read with `ast`: every such call in the package and the job scripts passes `weights_only=True`, and
    nothing imports a pickler."""
    checked = 0
    for path in sorted([*(REPO / "camray").rglob("*.py"), *(REPO / "jobs").rglob("*.py")]):
        tree = ast.parse(path.read_text(), filename=str(path))
        calls = _unsafe_loads(tree)
        assert all(call == "ok" for call in calls), f"{path.relative_to(REPO)}: {calls}"
        checked += len(calls)
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"pickle", "dill", "cloudpickle"}, f"{path} imports a pickler"
    assert checked >= 1  # the scan sees the loader in camray/models/weights.py


def test_the_scan_catches_unsafe_loads():
    code = (
        "import torch\ntorch.load(p)\ntorch.load(p, weights_only=False)\nw.get_state_dict(progress=False)\n"
        "torch.load(p, map_location='cpu', weights_only=True)\n"
    )
    assert _unsafe_loads(ast.parse(code)) == [
        "2: torch.load(p)",
        "3: torch.load(p, weights_only=False)",
        "4: w.get_state_dict(progress=False)",
        "ok",
    ]
