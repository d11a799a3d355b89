"""Edge-aware refinements of class maps, measured for label maps (`camray.evaluation.seg_sweep`).

Each takes one image's kept classes' maps on the map grid (float[K, R, R], covering the whole image, normalised)
and the image as the model saw it (the valid region of its decoded canvas, uint8[h, w, 3]), and returns scores on
the canvas's pixels (float[K, h, w] or, for the CRF, float[K + 1, h, w] with background first) from which
`camray.cam.label_maps.label_maps` (or an argmax, for the CRF) makes the label map:

- `bilinear`: the maps resampled to the canvas, no edges: the control that separates resolution from edges;
- `guided`: each map filtered by the guided filter (He et al., ECCV 2010) with the RGB canvas as the guide
  (kornia's `guided_blur`: torch, any device);
- `superpixels`: each map averaged over SLIC superpixels of the canvas (scikit-image);
- `crf`: the fully connected CRF (Kraehenbuehl and Koltun, NeurIPS 2011, `pydensecrf2`), the classic refinement
  of CAM seeds (SEC, AffinityNet, IRN), its unary the label rule's own scores: background at the threshold, each
  class at its map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_canvas(maps: np.ndarray, height: int, width: int) -> torch.Tensor:
    """float[K, R, R] over the whole image -> float32 Tensor[K, height, width], bilinear at pixel centres."""
    return F.interpolate(torch.from_numpy(maps)[None].float(), size=(height, width), mode="bilinear")[0]


def bilinear(maps: np.ndarray, canvas: np.ndarray) -> np.ndarray:
    return to_canvas(maps, *canvas.shape[:2]).numpy()


def guided(maps: np.ndarray, canvas: np.ndarray, radius: int = 8, eps: float = 0.01) -> np.ndarray:
    """The guided filter of each map, the canvas (scaled to [0, 1]) as guide; `eps` in squared guide units."""
    from kornia.filters import guided_blur

    guide = torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255.0
    scores = to_canvas(maps, *canvas.shape[:2])[None]
    return guided_blur(guide, scores, 2 * radius + 1, eps)[0].clamp(0, 1).numpy()


def superpixels(maps: np.ndarray, canvas: np.ndarray, segments: int = 200, compactness: float = 10.0) -> np.ndarray:
    """Each map's mean over each SLIC superpixel of the canvas."""
    from skimage.segmentation import slic

    labels = slic(canvas, n_segments=segments, compactness=compactness, start_label=0)
    scores = to_canvas(maps, *canvas.shape[:2]).numpy()
    flat = labels.ravel()
    count = np.bincount(flat)
    means = np.stack([np.bincount(flat, weights=s.ravel()) / count for s in scores])
    return means[:, labels]


def crf(
    maps: np.ndarray,
    canvas: np.ndarray,
    background: float,
    iterations: int = 5,
    gaussian: float = 3.0,
    bilateral_xy: float = 50.0,
    bilateral_rgb: float = 10.0,
    bilateral_weight: float = 4.0,
) -> np.ndarray:
    """Marginals (float[K + 1, h, w], background first) of the dense CRF whose unary is -log of the scores
    (background, then each map) normalised per pixel; the kernels' parameters are the DeepLab and IRN ones
    scaled to a canvas of a few hundred pixels."""
    import pydensecrf.densecrf as dcrf

    height, width = canvas.shape[:2]
    scores = to_canvas(maps, height, width).numpy()
    probs = np.concatenate([np.full((1, height, width), background, dtype=np.float32), scores]) + 1e-5
    probs /= probs.sum(axis=0, keepdims=True)
    model = dcrf.DenseCRF2D(width, height, probs.shape[0])
    model.setUnaryEnergy(np.ascontiguousarray(-np.log(probs).reshape(probs.shape[0], -1)).astype(np.float32))
    model.addPairwiseGaussian(sxy=gaussian, compat=3)
    model.addPairwiseBilateral(
        sxy=bilateral_xy, srgb=bilateral_rgb, rgbim=np.ascontiguousarray(canvas), compat=bilateral_weight
    )
    return np.asarray(model.inference(iterations), dtype=np.float32).reshape(probs.shape)
