"""The demo photos: real photographs that ship inside installed packages, copied into a local folder."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from camray.errors import ConfigError

# The packages the photos ship in: the `demo` extra, which the worker image goes without.
DEMO_PACKAGES = {"skimage": "scikit-image", "matplotlib": "matplotlib"}


def require_demo_packages() -> None:
    """Raises a ConfigError naming the extra to install unless the packages holding the demo photos are there."""
    missing = [dist for module, dist in DEMO_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(
            f"`source.uri` `samples` runs the demo, whose photos ship in {' and '.join(missing)}, not installed "
            "here: install the demo extra (pip install 'camray[demo]') or give your own images with --input"
        )


def sample_photos() -> dict[str, Path]:
    """File name -> path inside the installed scikit-image and matplotlib packages."""
    require_demo_packages()
    import matplotlib
    import skimage

    skimage_data = Path(skimage.__file__).parent / "data"
    photos = {
        name: skimage_data / name
        for name in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png", "motorcycle_left.png")
    }
    photos["grace_hopper.jpg"] = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return photos


def export_samples(folder: str | Path) -> Path:
    """Copies the demo photos (bytes unchanged) into `folder` and returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in sample_photos().items():
        if not (folder / name).exists():
            # Copied under a name of this process's, then renamed: a second run exporting at the same time
            # never sees half a photo.
            partial = folder / f".{name}.{os.getpid()}.partial"
            shutil.copyfile(path, partial)
            partial.replace(folder / name)
    return folder


if __name__ == "__main__":
    import sys

    print(export_samples(sys.argv[1] if len(sys.argv) > 1 else "data/samples"))
