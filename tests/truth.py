"""Hand-drawn ground truth for the sample photos, and the box overlap used to check it."""

# (x0, y0, x1, y1) of the main object, in original pixels.
CHELSEA_CAT = (20, 0, 400, 300)


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
