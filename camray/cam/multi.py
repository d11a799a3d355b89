"""Several objects an image: windows that propose classes, boxes from each window's own maps, merged.

A window is the whole image (downscaled to the model's input) or one of its tiles. Conventions, stated once:
windows `(W,)` are ordered with the `B` whole images first, then the tiles (`image_of` says whose); a window's
region is ``(x, y, w, h)`` in canvas pixels; boxes are ``(x0, y0, x1, y1)`` pixel-edge, on the grid named.
"""

from __future__ import annotations

import torch
from torch import Tensor


def candidate_scores(probs: Tensor, window_image: Tensor, images: int, propose_score: float) -> Tensor:
    """(B, N): each image's score of every class, the higher of its whole-image probability and the probability
    of the tiles that propose it.

    Args:
        probs (Tensor[W, N]): probabilities of each window, the `images` whole images first.
        window_image (Tensor[W]): the image each window belongs to.
        propose_score: a tile whose top-1 class reaches this probability proposes that class.
    """
    n = probs.shape[1]
    candidate = probs[:images].clone()
    top, top_class = probs[images:].max(dim=1)
    proposed = top >= propose_score
    slot = window_image[images:][proposed] * n + top_class[proposed]
    candidate.view(-1).scatter_reduce_(0, slot, top[proposed], reduce="amax")
    return candidate


def propose_classes(
    probs: Tensor, window_image: Tensor, images: int, k: int, propose_score: float
) -> tuple[Tensor, Tensor]:
    """The `k` candidate classes of each image and their scores, best first (`candidate_scores`'s arguments).

    Returns:
        class_ids (Tensor[B, K]), scores (Tensor[B, K]): a class's score is `candidate_scores`'; the whole image's
        top-1 class comes first, the others by score, so with no tile proposing anything this is the whole
        image's top-k.
    """
    candidate = candidate_scores(probs, window_image, images, propose_score)
    # The whole image's own best class stays first, so that a photo of one object keeps its top-1.
    ranked = candidate.scatter(1, probs[:images].argmax(dim=1, keepdim=True), torch.inf)
    class_ids = ranked.topk(k, dim=1).indices
    return class_ids, candidate.gather(1, class_ids)


def window_proposes(
    window_probs: Tensor,
    images: int,
    propose_score: float,
    kept: Tensor | None = None,
    given: Tensor | None = None,
) -> Tensor:
    """(W, K) bool: which of its image's `K` candidate classes each window boxes in its own map.

    `window_probs (Tensor[W, K])` is each window's probability of its image's candidates; `kept (Tensor[W, K])`
    marks the candidates that are the image's own (the rest are padding, never boxed), `given (Tensor[B, K])` the
    image's given labels. A tile boxes its own best candidate where that reaches `propose_score`; a whole image
    boxes each candidate it scores that high, each given label, and its own best candidate always (its best
    class, unless a tile proposed a class it scores higher)."""
    if kept is not None:
        window_probs = window_probs.where(kept, -1.0)
    best = window_probs.argmax(dim=1, keepdim=True)
    is_best = torch.zeros_like(window_probs, dtype=torch.bool).scatter_(1, best, True)
    confident = window_probs >= propose_score
    proposes = is_best & confident
    proposes[:images] = confident[:images] | is_best[:images]
    if given is not None:
        proposes[:images] |= given
    return proposes if kept is None else proposes & kept


def window_boxes_to_image(boxes: Tensor, window_grid: int, region: Tensor, image_wh: Tensor, image_grid: int) -> Tensor:
    """Boxes on a window's `window_grid` x `window_grid` map grid -> boxes on its image's map grid.

    Args:
        boxes (Tensor[M, 4]): in window grid cells, the grid spanning the window's `region`.
        region (Tensor[M, 4]): the box's window ``(x, y, w, h)`` in canvas pixels.
        image_wh (Tensor[M, 2]): the valid canvas region of the box's image, in canvas pixels.
        image_grid: R, the side of the image's maps, which span its valid region.
    """
    scale = region[:, 2:4].float().repeat(1, 2) / window_grid
    canvas = boxes.float() * scale + region[:, 0:2].float().repeat(1, 2)
    return canvas * (image_grid / image_wh.float()).repeat(1, 2)


def merge_boxes(
    boxes: Tensor,
    scores: Tensor,
    image: Tensor,
    class_ids: Tensor,
    iou: float,
    cross_class_iou: float | None,
    given: Tensor | None = None,
) -> Tensor:
    """Indices of the boxes kept, best score first: class-aware NMS per image at `iou` (the same object boxed by
    several windows), then, with `cross_class_iou`, NMS across classes at that overlap (one object boxed as two
    neighbouring classes, tabby and tiger cat, keeps its better box). Boxes of an image's given labels (`given`)
    are of objects known to be there, each of its own class: no other class suppresses them.

    boxes (Tensor[M, 4]), scores (Tensor[M]), image (Tensor[M]), class_ids (Tensor[M]), given (Tensor[M], bool)."""
    # Imported here: torchvision loads torch._dynamo (seconds of CPU), which the bundled-model actors never pay.
    from torchvision.ops import batched_nms

    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    n = int(class_ids.max()) + 1
    keep = batched_nms(boxes.float(), scores.float(), image * n + class_ids, iou)
    if cross_class_iou is not None:
        group = image[keep] * (n + 1) + (n if given is None else class_ids[keep].where(given[keep], n))
        again = batched_nms(boxes[keep].float(), scores[keep].float(), group, cross_class_iou)
        keep = keep[again]
    return keep


def inside_fraction(boxes: Tensor, containers: Tensor) -> Tensor:
    """(M, P): the share of each box's area that lies inside each container; boxes (Tensor[M, 4]),
    containers (Tensor[P, 4])."""
    low = torch.maximum(boxes[:, None, :2], containers[None, :, :2])
    high = torch.minimum(boxes[:, None, 2:], containers[None, :, 2:])
    inter = (high - low).clamp_min(0).prod(dim=-1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(dim=-1).clamp_min(1e-12)
    return inter / area[:, None]


def drop_parts(boxes: Tensor, image: Tensor, class_ids: Tensor, from_tile: Tensor, contained: float) -> Tensor:
    """(M,) bool: the tile boxes to keep, every whole-image box kept. A tile box lying `contained` or more inside
    a whole-image box of its image and class is a part of that object (a tile sees a cut of it), and dropped.

    boxes (Tensor[M, 4]), image (Tensor[M]), class_ids (Tensor[M]), from_tile (Tensor[M], bool)."""
    keep = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    whole = torch.nonzero(~from_tile).flatten()
    tiles = torch.nonzero(from_tile).flatten()
    if whole.numel() == 0 or tiles.numel() == 0:
        return keep
    same = (image[tiles, None] == image[None, whole]) & (class_ids[tiles, None] == class_ids[None, whole])
    part = ((inside_fraction(boxes[tiles], boxes[whole]) >= contained) & same).any(dim=1)
    keep[tiles[part]] = False
    return keep
