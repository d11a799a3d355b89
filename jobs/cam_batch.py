"""Entry point: `python jobs/cam_batch.py [--config FILE] [--input URI] [--output URI] [--SECTION.FIELD VALUE]`.

Runs on the Ray cluster at RAY_ADDRESS (as under `ray job submit`) or on a local one it starts. With no
arguments it runs the demo: the bundled sample photos, the bundled EfficientNet-Lite0, output in ./output/.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the package travels in the working dir, not in site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from camray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
