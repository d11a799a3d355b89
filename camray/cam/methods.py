"""Map extraction on a model: hooks on the target layer, then one CAM method per call.

Hooks live only for the duration of one call (registered in `__call__`, removed in `finally`), so two
extractors on one model never stack hooks and a raising batch leaves the model clean. A compiled extractor is
the exception: `torch.compile` traces the hooks present at its first call and ignores hooks added later
(dynamo skips hook guards on modules), so it keeps its hooks for its lifetime and removes them in `close`.
Gradient methods get the gradients of all top-k classes from one batched backward pass (`is_grads_batched`),
through the layers after the target only: the hook re-roots the graph at the target's output. A transformer's
target output (patch tokens, with or without a class token) is read as the feature map of its token grid
(`camray.cam.tokens`), for the activations and their gradients alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camray.cam.layers import resolve_layer
from camray.cam.maps import class_activation_maps
from camray.cam.method_names import CAM_METHODS, GRADIENT_METHODS
from camray.cam.tokens import to_grid

if TYPE_CHECKING:  # the spec is only read here; importing `camray.models` would pull in weight IO
    from camray.models.registry import ModelSpec


def _gradcam(acts: Tensor, grads: Tensor) -> Tensor:
    weights = grads.mean(dim=(-2, -1), keepdim=True)
    return F.relu((weights * acts).sum(dim=-3))


def _gradcampp(acts: Tensor, grads: Tensor) -> Tensor:
    # Chattopadhyay et al., eq. 19: alpha = g^2 / (2 g^2 + sum_ab(A) g^3), zero where the gradient is.
    grads_2 = grads.pow(2)
    grads_3 = grads_2 * grads
    denom = 2 * grads_2 + acts.sum(dim=(-2, -1), keepdim=True) * grads_3
    alpha = torch.where(grads != 0, grads_2 / torch.where(denom != 0, denom, 1.0), 0.0)
    weights = (alpha * F.relu(grads)).sum(dim=(-2, -1), keepdim=True)
    return F.relu((weights * acts).sum(dim=-3))


def _xgradcam(acts: Tensor, grads: Tensor) -> Tensor:
    weights = (grads * acts).sum(dim=(-2, -1), keepdim=True) / (acts.sum(dim=(-2, -1), keepdim=True) + 1e-8)
    return F.relu((weights * acts).sum(dim=-3))


def _layercam(acts: Tensor, grads: Tensor) -> Tensor:
    return F.relu((F.relu(grads) * acts).sum(dim=-3))


def _hirescam(acts: Tensor, grads: Tensor) -> Tensor:
    return F.relu((grads * acts).sum(dim=-3))


# (activations (1, B, C, h, w), gradients (K, B, C, h, w)) -> maps (K, B, h, w)
GRADIENT_MAPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "gradcam": _gradcam,
    "gradcampp": _gradcampp,
    "xgradcam": _xgradcam,
    "layercam": _layercam,
    "hirescam": _hirescam,
}


def resolve_method(spec: ModelSpec, method: str | None) -> str:
    """The method to run on `spec`'s network (its default if None), or a ValueError naming `cam.method`."""
    method = method or spec.default_method
    if method == "cam" and spec.classifier_layer is None:
        raise ValueError(
            f"`cam.method` is `cam`, but {spec.name} has no global-average-pooling + linear ending; "
            f"use a gradient method such as `gradcam`"
        )
    if method not in CAM_METHODS:
        raise ValueError(
            f"`cam.method` {method!r} is not implemented; choose cam, scorecam or {', '.join(GRADIENT_METHODS)}"
        )
    return method


@dataclass(frozen=True)
class Extraction:
    """What one `MapExtractor.extract` call computed for a batch of B inputs.

    logits (Tensor[B, N]); maps (Tensor[B, K, h, w]), raw, not normalised; class_ids (Tensor[B, K]);
    layers: the output of each layer asked for, from the batch's own forward pass (not Score-CAM's masked
    ones), detached, in the order asked.
    """

    logits: Tensor
    maps: Tensor
    class_ids: Tensor
    layers: tuple[Tensor, ...] = ()


def select_classes(top_k: int, classes: Callable[[Tensor], Tensor] | None) -> Callable[[Tensor], Tensor]:
    """The class picker of one call: `classes` if given, else the top-k of the logits."""
    return classes or (lambda logits: logits.topk(top_k, dim=1).indices)


class MapExtractor:
    """Computes logits, the top-k classes and their raw maps for a batch.

    Call it with `x (Tensor[B, 3, H, W])` and `top_k`; it returns ``(logits (Tensor[B, N]),
    maps (Tensor[B, K, h, w]), class_ids (Tensor[B, K]))``. Raw maps are not normalised. `classes`, if given,
    picks the `K` class ids of each input from its logits instead of the top-k (tiles take their image's
    classes). A model in train mode is switched to eval for the call and back on the way out. `extract` does
    the same and also captures the outputs of other layers of the model in the same pass (a refining block).
    """

    def __init__(
        self,
        module: nn.Module,
        spec: ModelSpec,
        method: str,
        compile_model: bool = False,
        score_chunk: int = 64,
        capture: Sequence[nn.Module] = (),
    ) -> None:
        """`capture`: the other layers whose outputs a compiled extractor's `extract` may be asked for; an eager
        one captures any layer it is given per call. Only CAM is compiled: the gradient methods re-root the
        graph inside a hook and Score-CAM runs many masked passes, which stay eager."""
        method = resolve_method(spec, method)
        self.module = module
        self.spec = spec
        self.method = method
        self.target = resolve_layer(module, spec.target_layer, "model.target_layer")
        self.classifier = (
            resolve_layer(module, spec.classifier_layer, "model.classifier_layer") if spec.classifier_layer else None
        )
        self.score_chunk = score_chunk
        self.forward: Callable[[Tensor], Tensor] = module
        self._held: list[torch.utils.hooks.RemovableHandle] = []
        self.capture = tuple(capture)
        # What the held hooks saw in the last pass: the target's output, then each `capture` layer's. Replaced,
        # not appended, so forward passes outside `extract` (a benchmark's forward-only timing) hold nothing.
        self._slots: list[Tensor | None] = [None] * (1 + len(self.capture))
        if compile_model and method == "cam":
            self._held = [
                self.target.register_forward_hook(self._holder(0)),
                *(layer.register_forward_hook(self._holder(1 + i)) for i, layer in enumerate(self.capture)),
            ]
            self.forward = torch.compile(module)

    def _holder(self, slot: int) -> Callable[[nn.Module, object, Tensor], None]:
        def hold(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            self._slots[slot] = output

        return hold

    @property
    def compiled(self) -> bool:
        return bool(self._held)

    def close(self) -> None:
        """Removes the hooks a compiled extractor holds; an eager one holds none."""
        for handle in self._held:
            handle.remove()
        self._held = []

    def __call__(
        self, x: Tensor, top_k: int, classes: Callable[[Tensor], Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        out = self.extract(x, top_k, classes)
        return out.logits, out.maps, out.class_ids

    def extract(
        self,
        x: Tensor,
        top_k: int,
        classes: Callable[[Tensor], Tensor] | None = None,
        layers: Sequence[nn.Module] = (),
    ) -> Extraction:
        """The maps of `__call__`, and the outputs of `layers` (modules of this model) from the same pass."""
        if self._held:
            return self._extract_compiled(x, select_classes(top_k, classes), layers)
        # Switching walks every submodule (0.25 ms an image at CPU batch sizes): only a model in train mode pays.
        was_training = self.module.training
        if was_training:
            self.module.eval()
        captured: list[Tensor] = []
        select = select_classes(top_k, classes)
        needs_grad = self.method in GRADIENT_METHODS

        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor | None:
            if captured and self.method == "scorecam":
                return None  # the masked forwards of Score-CAM need no capture
            if needs_grad:
                leaf = output.detach().requires_grad_(True)
                captured.append(leaf)
                # Hand the rest of the network a copy: an in-place op after the target (DenseNet's ReLU)
                # must not touch the leaf the gradients are taken against.
                return leaf.clone()
            captured.append(output)
            return None

        outputs: list[Tensor | None] = [None] * len(layers)

        def keeper(position: int) -> Callable[[nn.Module, object, Tensor], None]:
            def keep(_module: nn.Module, _inputs: object, output: Tensor) -> None:
                if outputs[position] is None:  # Score-CAM's masked forwards come later; the batch's own is first
                    outputs[position] = output.detach()

            return keep

        handles = [self.target.register_forward_hook(hook)]
        try:
            handles += [layer.register_forward_hook(keeper(i)) for i, layer in enumerate(layers)]
            if needs_grad:
                with torch.enable_grad():
                    logits = self.forward(x)
                    logits, maps, class_ids = self._gradient_maps(logits, captured[-1], select)
            else:
                with torch.inference_mode():
                    logits = self.forward(x)
                    if self.method == "scorecam":
                        logits, maps, class_ids = self._score_maps(x, logits, captured[-1], select)
                    else:
                        logits, maps, class_ids = self._cam(logits, captured[-1], select)
        finally:
            for handle in handles:
                handle.remove()
            if was_training:
                self.module.train()
        missing = [str(i) for i, output in enumerate(outputs) if output is None]
        if missing:
            raise ValueError(f"`layers` {', '.join(missing)} did not run in the model's forward pass")
        return Extraction(logits, maps, class_ids, tuple(output for output in outputs if output is not None))

    def _extract_compiled(
        self, x: Tensor, select: Callable[[Tensor], Tensor], layers: Sequence[nn.Module]
    ) -> Extraction:
        positions = []
        for layer in layers:
            if not any(layer is held for held in self.capture):
                raise ValueError("a compiled extractor captures only the layers it was built with (`capture`)")
            positions.append(1 + next(i for i, held in enumerate(self.capture) if held is layer))
        was_training = self.module.training
        if was_training:
            self.module.eval()
        try:
            self._slots[:] = [None] * len(self._slots)
            with torch.inference_mode():
                logits = self.forward(x)
                features = self._slots[0]
                if features is None:
                    raise RuntimeError(f"the target layer {self.spec.target_layer!r} did not run in the compiled pass")
                logits, maps, class_ids = self._cam(logits, features, select)
            kept = tuple(self._slots[position] for position in positions)
        finally:
            self._slots[:] = [None] * len(self._slots)
            if was_training:
                self.module.train()
        if any(output is None for output in kept):
            raise ValueError("`layers` did not run in the model's forward pass")
        return Extraction(logits, maps, class_ids, tuple(output for output in kept if output is not None))

    def grid(self, output: Tensor) -> Tensor:
        """The target layer's output (or its gradients, with leading dimensions) as `(..., C, h, w)`."""
        return to_grid(output, self.spec.layout, self.spec.prefix_tokens)

    def _cam(
        self, logits: Tensor, features: Tensor, select: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        assert self.classifier is not None
        features = self.grid(features)
        if self.spec.feature_relu:
            features = F.relu(features)
        class_ids = select(logits)
        class_weights = self.classifier.weight[class_ids]
        return logits, class_activation_maps(features, class_weights), class_ids

    def _gradient_maps(
        self, logits: Tensor, acts: Tensor, select: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        class_ids = select(logits.detach())
        top_k = class_ids.shape[1]
        # One cotangent per rank k: the one-hot of each image's k-th class, all backpropagated at once.
        cotangents = torch.zeros((top_k, *logits.shape), dtype=logits.dtype, device=logits.device)
        cotangents.scatter_(2, class_ids.t().unsqueeze(-1), 1.0)
        (grads,) = torch.autograd.grad(logits, acts, grad_outputs=cotangents, is_grads_batched=True)
        acts, grads = self.grid(acts.detach()).float(), self.grid(grads).float()
        if self.spec.feature_relu:
            # Weigh what the pooling sees, as CAM does; the gradients stay those of the target's own output
            # (zero where the ReLU clips), as in pytorch-grad-cam.
            acts = F.relu(acts)
        maps = GRADIENT_MAPS[self.method](acts.unsqueeze(0), grads)  # (K, B, h, w)
        return logits.detach(), maps.permute(1, 0, 2, 3).contiguous(), class_ids

    def _score_maps(
        self, x: Tensor, logits: Tensor, acts: Tensor, select: Callable[[Tensor], Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Score-CAM (Wang et al., CVPRW 2020): each channel, min-max normalised and upsampled, masks the input;
        its weight is the softmax over channels of the class score's increase. All top-k classes share the
        B x C masked forward passes, which is the whole cost: C forwards per image (1280 for EfficientNet).
        """
        class_ids = select(logits)
        top_k = class_ids.shape[1]
        acts = self.grid(acts)
        b, c, h, w = acts.shape
        flat = acts.float().flatten(2)
        low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
        masks = ((flat - low) / (high - low + 1e-8)).view(b * c, 1, h, w)
        image_of = torch.arange(b, device=x.device).repeat_interleave(c)
        baseline = logits.gather(1, class_ids)  # (B, K)
        gains = torch.empty(b * c, top_k, device=x.device)
        for start in range(0, b * c, self.score_chunk):
            part = slice(start, min(start + self.score_chunk, b * c))
            upsampled = F.interpolate(masks[part], size=x.shape[-2:], mode="bilinear", align_corners=False)
            scores = self.forward(upsampled.to(x.dtype) * x[image_of[part]])
            gains[part] = (scores.gather(1, class_ids[image_of[part]]) - baseline[image_of[part]]).float()
        weights = torch.softmax(gains.view(b, c, top_k), dim=1)
        maps = F.relu(torch.einsum("bck,bchw->bkhw", weights, acts.float()))
        return logits, maps, class_ids
