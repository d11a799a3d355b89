"""The inputs of the output tools' real runs (a helper module; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path


def input_files(evalset: tuple[list[Path], Path], photos: dict[str, bytes]) -> dict[str, bytes]:
    """The run's inputs by name: the ten evaluation images, one broken JPEG (an error row) and `vanishing.jpg`,
    which the tests delete after the run (the report must show it missing)."""
    images, _ = evalset
    files = {path.name: path.read_bytes() for path in images}
    jpeg = photos["grace_hopper.jpg"]
    files["broken.jpg"] = jpeg[: len(jpeg) // 3]
    files["vanishing.jpg"] = jpeg
    return files
