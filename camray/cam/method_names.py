"""The names of the CAM methods camray implements: the one list that the config and the extractor both read.

Plain names with no torch behind them, so that the config (pydantic, loaded by every CLI verb) can import them
without loading the compute.
"""

from __future__ import annotations

from typing import Literal, get_args

CamMethod = Literal["cam", "gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "scorecam"]
CAM_METHODS: tuple[str, ...] = get_args(CamMethod)
# Weighted by the gradients of the class score; `cam` and `scorecam` need none.
GRADIENT_METHODS: tuple[str, ...] = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam")
