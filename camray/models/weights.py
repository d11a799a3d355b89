"""Weight resolution: bundled packages, local files, `s3://` (cached per node), torchvision downloads.

Every file is loaded with `torch.load(..., weights_only=True)`, or as safetensors: a weights file is data, never
code.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import torch

from camray.errors import SetupError
from camray.io.sources import S3Settings, filesystem_for, is_s3

logger = logging.getLogger(__name__)

CACHE_DIR = Path(os.environ.get("CAMRAY_CACHE", Path.home() / ".cache" / "camray")) / "weights"


class WeightsError(SetupError):
    """Weights that cannot be found, fetched or loaded, or that fit no supported architecture; the message says
    how to supply them. Found before any work, it is the user's to fix (exit status 2)."""


@dataclass(frozen=True)
class LoadedWeights:
    state_dict: dict[str, torch.Tensor]
    sha256: str
    source: str


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_s3(uri: str, s3: S3Settings) -> Path:
    """Downloads `uri` once per node into the cache; a cached copy is reused only if it is complete."""
    fs, path = filesystem_for(uri, s3)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise WeightsError(f"weights {uri} do not exist")
    name = hashlib.sha256(f"{uri}:{info.size}:{info.mtime_ns}".encode()).hexdigest()[:24]
    target = CACHE_DIR / f"{name}-{Path(path).name}"
    if target.exists() and target.stat().st_size == info.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Actors starting together on one node wait for one download instead of each fetching the file.
    with open(target.with_name(f".{target.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists() and target.stat().st_size == info.size:
            return target
        # Download beside the target and rename: a torn file must never load.
        with (
            tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp,
            fs.open_input_stream(path) as src,
        ):
            while chunk := src.read(1 << 22):
                tmp.write(chunk)
        os.replace(tmp.name, target)
    logger.info("downloaded weights %s (%d bytes)", uri, info.size)
    return target


def load_weights_file(uri: str, s3: S3Settings, expected_sha256: str | None = None) -> LoadedWeights:
    """Loads a state dict from a local path, `file://` or `s3://` URI."""
    if is_s3(uri):
        path = _fetch_s3(uri, s3)
    else:
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file {uri} does not exist")
    digest = sha256_of(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise WeightsError(f"weights {uri} have sha256 {digest}, expected {expected_sha256} (`model.weights_sha256`)")
    try:
        if path.suffix == ".safetensors":  # timm's and the Hugging Face hub's format: tensors only, never code
            from safetensors.torch import load_file

            loaded = load_file(path, device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise a variety of parsing errors
        raise WeightsError(f"weights {uri} could not be loaded as a state dict: {exc}") from exc
    # Training checkpoints wrap the state dict with the rest of their state (optimizer, epoch, hyper-parameters):
    # Lightning's and many scripts' under `state_dict`, others' under `model`. Wrappers' key prefixes (`module.`,
    # a Lightning module's attribute) are taken off against the model's own keys (`camray.models.heads`).
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"weights {uri} do not hold a state dict of tensors")
    return LoadedWeights(loaded, digest, uri)


def load_torchvision_weights(model_name: str, weights_name: str, expected_sha256: str | None = None) -> LoadedWeights:
    """Torchvision's named weights: downloaded into torch.hub's cache (needs internet on first use), then loaded
    like any file, so `expected_sha256` is checked before the file is unpickled (torch.hub's own loader would
    unpickle first, and without `weights_only`)."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(model_name)
        weights = enum[weights_name] if weights_name != "DEFAULT" else enum.DEFAULT
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"torchvision has no weights {weights_name!r} for {model_name!r}") from exc
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.exists():
        cached.parent.mkdir(parents=True, exist_ok=True)
        # Torchvision names its files `<name>-<sha256 prefix>.pth`; torch.hub checks the prefix and writes
        # through a temporary file, so a torn download never sits in the cache.
        prefix = torch.hub.HASH_REGEX.search(cached.name)
        try:
            torch.hub.download_url_to_file(
                weights.url, str(cached), hash_prefix=prefix.group(1) if prefix else None, progress=False
            )
        except Exception as exc:  # URLError, socket errors, HTTP errors: all mean "no download here"
            raise WeightsError(
                f"could not download torchvision weights {weights} ({type(exc).__name__}: {exc}). "
                f"On a machine without internet, download {weights.url} elsewhere and pass it as "
                f"`--weights /path/to/file.pth` or `--weights s3://bucket/key.pth` (config `model.weights`)."
            ) from exc
    loaded = load_weights_file(str(cached), S3Settings(), expected_sha256)
    return LoadedWeights(loaded.state_dict, loaded.sha256, f"torchvision:{weights_name}")
