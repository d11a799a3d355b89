"""Hand-drawn ground truth for the sample photos, and the box overlap used to check it."""

from camray.evaluation.evaluate import edge_iou as iou  # noqa: F401 - pixel-edge IoU, the job's box convention

# (x0, y0, x1, y1) of the main object, in original pixels.
CHELSEA_CAT = (20, 0, 400, 300)
