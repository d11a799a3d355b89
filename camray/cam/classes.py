"""Which classes of an image get maps: the predicted ones, the given ones (its labels), or both.

Conventions, stated once: scores are `(B, N)` over the head's N classes; an image's given labels are a row of
class ids padded with -1 (`(B, G)`). The kept classes of a batch are a `(B, K)` tensor with K the largest number
any image keeps, best first; the slots past an image's own are padding (`kept` False), holding a valid class id
(the image's first) so that maps can be computed for the whole tensor, and never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ClassMode = Literal["predicted", "given", "both"]


@dataclass(frozen=True)
class ClassChoice:
    """The classes of a batch.

    predicted_ids (Tensor[B, P]), predicted_scores (Tensor[B, P]): the top-P classes by rank, best first.
    class_ids (Tensor[B, K]), scores (Tensor[B, K]): the kept classes, by rank, best first, then padding.
    kept (Tensor[B, K], bool): the slots that are an image's own.
    given (Tensor[B, K], bool): the kept slots that are among the image's labels.
    every_slot_kept: True where no slot can be padding (the predictions are kept, no score bound): callers skip
    the masking, and its device syncs, then.
    """

    predicted_ids: Tensor
    predicted_scores: Tensor
    class_ids: Tensor
    scores: Tensor
    kept: Tensor
    given: Tensor
    every_slot_kept: bool


def choose_classes(
    scores: Tensor,
    top_k: int,
    mode: ClassMode = "predicted",
    min_score: float | None = None,
    given: Tensor | None = None,
    ranking: Tensor | None = None,
) -> ClassChoice:
    """The predictions and kept classes of each image.

    Args:
        scores (Tensor[B, N]): each class's probability (softmax or sigmoid).
        top_k: P, the number of predictions.
        mode: `predicted` keeps the predictions scoring at least `min_score` (all of them without one), `given`
            the image's labels whatever their score, `both` the union.
        given (Tensor[B, G], long): each image's labels, padded with -1; None: no image has any.
        ranking (Tensor[B, N]): the order of the classes where it is not `scores`' (a mode that puts one class
            first whatever its score); kept classes and predictions follow it.
    """
    ranking = scores if ranking is None else ranking
    b, n = scores.shape
    predicted_ids = ranking.topk(min(top_k, n), dim=1).indices
    predicted_scores = scores.gather(1, predicted_ids)
    if mode == "predicted" and min_score is None:
        every = torch.ones_like(predicted_ids, dtype=torch.bool)
        return ClassChoice(
            predicted_ids, predicted_scores, predicted_ids, predicted_scores, every, ~every, every_slot_kept=True
        )
    # One column past the classes catches what is not chosen: predictions below the bound, label padding.
    member = torch.zeros((b, n + 1), dtype=torch.bool, device=scores.device)
    if mode in ("predicted", "both"):
        chosen = predicted_ids if min_score is None else predicted_ids.where(predicted_scores >= min_score, n)
        member.scatter_(1, chosen, True)
    labelled = torch.zeros_like(member)
    if mode in ("given", "both") and given is not None and given.numel():
        labelled.scatter_(1, given.to(scores.device).where(given.to(scores.device) >= 0, n), True)
    member = (member | labelled)[:, :n]
    labelled = labelled[:, :n]
    k = max(int(member.sum(dim=1).max()), 1)
    key = torch.where(member, ranking.float(), -torch.inf)
    values, order = key.topk(k, dim=1)
    kept = values > -torch.inf
    class_ids = order.where(kept, order[:, :1])
    return ClassChoice(
        predicted_ids,
        predicted_scores,
        class_ids,
        scores.gather(1, class_ids),
        kept,
        labelled.gather(1, class_ids) & kept,
        every_slot_kept=False,
    )
