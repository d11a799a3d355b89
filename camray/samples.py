"""The demo photos: real photographs that ship inside installed packages, copied into a local folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def sample_photos() -> dict[str, Path]:
    """File name -> path inside the installed scikit-image and matplotlib packages."""
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
