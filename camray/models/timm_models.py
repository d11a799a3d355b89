"""timm classifiers, `--model timm:NAME`, read through timm's own API: no table per family.

Every timm model answers `forward_features`, `forward_head(pre_logits=...)`, `get_classifier()`, its pooling type
and `pretrained_cfg` (mean, std, input size, interpolation, weights location). camray wraps the model so that
`forward_features`' output passes a hook point (`features`), then decides by measuring one forward of a random
batch, before any work:

- **layout** of the features: `(B, C, h, w)` (CNNs, MaxViT, CoAtNet), `(B, h, w, C)` (Swin) or a token sequence
  `(B, P + h * w, C)` after `num_prefix_tokens` class/distillation/register tokens (ViT, DeiT, BEiT, EVA);
- **CAM** where the head is pooling plus one linear layer: the pooling type is `avg`, the pre-logits equal the
  mean of the features over their grid, and the classifier is an `nn.Linear` whose output on them is the logits.
  Otherwise (a class token, a norm or an MLP after the pooling) only the gradient methods apply;
- **target layer**: the features; for a head that reads the class token, the first norm of the last block,
  whose input is the last place patch tokens reach the class token (after it their gradients are zero);
- **refine layer**: the last `feature_info` stage at twice the target grid's resolution, if any.

A model none of this fits (no classifier, features that are no grid) is refused with a message naming it.
timm is imported only here, and only for `timm:` names: a bundled-Lite process never pays for it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from camray.cam.tokens import Layout, to_grid
from camray.models.weights import WeightsError

logger = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"
_PROBE_BATCH = 2


class TimmClassifier(nn.Module):
    """A timm model whose `forward_features` output passes through `features` (a hook point) into its head.

    Weights load into the inner model (`model.`), in timm's own key layout, through the architecture's checkpoint
    filter where it has one (position embeddings resampled to another input size, original layouts converted).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.features = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.model.forward_head(self.features(self.model.forward_features(x)))

    def adapt_state_dict(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """A state dict of the bare timm model (as timm and the hub publish it) or of this wrapper, in this
        wrapper's layout, through the architecture's checkpoint filter where it has one."""
        if state_dict and all(key.startswith("model.") for key in state_dict):  # saved from this wrapper
            state_dict = {key.removeprefix("model."): value for key, value in state_dict.items()}
        checkpoint_filter = getattr(sys.modules[type(self.model).__module__], "checkpoint_filter_fn", None)
        if checkpoint_filter is not None:
            state_dict = checkpoint_filter(state_dict, self.model)
        return {f"model.{key}": value for key, value in state_dict.items()}


def _refuse(name: str, why: str) -> ValueError:
    return ValueError(f"`model.name` {name!r}: camray cannot explain this model: {why}")


def _build(arch: str, input_size: int | None, num_classes: int | None = None) -> tuple[TimmClassifier, dict[str, Any]]:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    native = int(cfg.input_size[-1]) if cfg is not None else 224
    kwargs: dict[str, Any] = {}
    if input_size and input_size != native and cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = input_size  # position embeddings and windows are built for one size
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    return TimmClassifier(model), dict(model.pretrained_cfg)


def _pool_type(model: nn.Module) -> str:
    """The pooling before the classifier, as timm names it (`avg`, `token`, `max`, ... or `` for none)."""
    for owner in (model, getattr(model, "head", None)):
        pool = getattr(owner, "global_pool", None)
        if isinstance(pool, str):
            return pool
        if pool is not None and hasattr(pool, "pool_type"):
            return str(pool.pool_type)
    return ""


def _layout(name: str, features: Tensor, num_features: int, prefix: int) -> Layout:
    if features.dim() == 3:
        to_grid(features, "tokens", prefix)  # raises where the patch tokens form no square grid
        return "tokens"
    if features.dim() == 4 and features.shape[1] == num_features:
        return "nchw"
    if features.dim() == 4 and features.shape[-1] == num_features:
        return "nhwc"
    raise _refuse(name, f"`forward_features` returns {tuple(features.shape)}, not a grid of {num_features} channels")


def _module_path(root: nn.Module, target: nn.Module) -> str | None:
    return next((path for path, module in root.named_modules() if module is target), None)


def _is_pooling_plus_linear(
    model: nn.Module, features: Tensor, grid: Tensor, classifier: nn.Module | None, pool: str
) -> bool:
    """Whether logits = classifier(mean of the features over their grid), measured on `features` with the head's
    parameters and buffers redrawn: a freshly built norm (weight 1, bias 0, unit running variance) is the identity,
    and would pass for no norm at all."""
    if pool != "avg" or not isinstance(classifier, nn.Linear):
        return False
    head = _modules_run_by(lambda: model.forward_head(features))
    with _redrawn(head):
        pooled = model.forward_head(features, pre_logits=True)
        if pooled.shape != grid.shape[:2]:
            return False
        logits = model.forward_head(features)
        mean_pooled = torch.allclose(pooled, grid.mean((-2, -1)), rtol=1e-4, atol=1e-5)
        return mean_pooled and torch.allclose(logits, classifier(pooled), rtol=1e-4, atol=1e-5)


def _modules_run_by(call: Callable[[], object]) -> list[nn.Module]:
    run: list[nn.Module] = []
    handle = nn.modules.module.register_module_forward_hook(lambda module, _i, _o: run.append(module))
    try:
        call()
    finally:
        handle.remove()
    return run


@contextlib.contextmanager
def _redrawn(modules: list[nn.Module]) -> Iterator[None]:
    """Random values in the floating parameters and buffers of `modules` (variances kept positive), restored after."""
    tensors = {id(t): t for m in modules for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]}
    saved = {key: tensor.detach().clone() for key, tensor in tensors.items()}
    generator = torch.Generator().manual_seed(1)
    try:
        with torch.no_grad():
            for tensor in tensors.values():
                if tensor.is_floating_point():
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
        yield
    finally:
        with torch.no_grad():
            for key, tensor in tensors.items():
                tensor.copy_(saved[key])


def _last_block_norm(name: str, model: nn.Module) -> str:
    info = getattr(model, "feature_info", None) or []
    block_path = info[-1]["module"] if info else None
    block = model.get_submodule(block_path) if block_path else None
    for path, module in block.named_modules() if block is not None else ():
        if path and (isinstance(module, nn.LayerNorm | nn.GroupNorm | nn.RMSNorm) or "Norm" in type(module).__name__):
            return f"model.{block_path}.{path}"
    raise _refuse(name, "its head reads a class token and its last block has no norm to explain at")


def _refine_layer(
    model: nn.Module, target_side: int, outputs: dict[str, Tensor], num_chs: dict[str, int]
) -> tuple[str | None, Layout]:
    """The last stage (in `feature_info`) whose output is a grid at twice the target's side, and its layout."""
    for module_path in reversed(list(outputs)):
        out, channels = outputs[module_path], num_chs[module_path]
        # A stride-2 step rounds up: 11 x 11 at stride 16 becomes 6 x 6 at stride 32.
        if out.dim() == 4 and out.shape[1] == channels and _halves_to(out.shape[-1], target_side):
            return f"model.{module_path}", "nchw"
        if out.dim() == 4 and out.shape[-1] == channels and _halves_to(out.shape[-2], target_side):
            return f"model.{module_path}", "nhwc"
    return None, "nchw"


def _halves_to(side: int, target_side: int) -> bool:
    return side > target_side and (side + 1) // 2 == target_side


def _categories(model: nn.Module, num_classes: int) -> tuple[str, ...]:
    from timm.data import ImageNetInfo, infer_imagenet_subset

    from camray.models.spec import imagenet_categories

    subset = infer_imagenet_subset(model)
    if subset == "imagenet-1k" and num_classes == 1000:
        return imagenet_categories()  # the short labels every other camray model writes
    if subset is not None:
        info = ImageNetInfo(subset)
        if info.num_classes() == num_classes:
            return tuple(info.index_to_description(i).split(",")[0] for i in range(num_classes))
    return ()  # unknown: `camray.models.labels.class_names` names them


def timm_spec(
    name: str, input_size: int | None = None, target_layer: str | None = None, classifier_layer: str | None = None
):
    """The `ModelSpec` of `timm:ARCH[.TAG]`, measured on the model built once here (`build` hands that instance
    out first, so the driver builds its model once). A ValueError names `model.name` for a model camray cannot
    explain."""
    import timm

    arch = name.removeprefix(TIMM_PREFIX)
    if not timm.is_model(arch):
        raise ValueError(f"`model.name` {name!r} is not a timm model (see `timm.list_models()`)")
    wrapper, cfg = _build(arch, input_size)
    model = wrapper.model
    unmeasured = unmeasured_timm_spec(name, input_size, wrapper, cfg)
    classifier = model.get_classifier()
    num_classes = int(getattr(model, "num_classes", 0) or 0)
    if num_classes <= 0 or isinstance(classifier, nn.Identity):
        raise _refuse(name, "it has no classifier (`num_classes` 0: a feature extractor or a pretraining checkpoint)")
    side = input_size or int(cfg["input_size"][-1])
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    info = getattr(model, "feature_info", None) or []
    stages = {entry["module"]: int(entry["num_chs"]) for entry in info if entry.get("module")}
    stage_outputs: dict[str, Tensor] = {}
    handles = [
        model.get_submodule(path).register_forward_hook(
            lambda _m, _i, out, path=path: stage_outputs.__setitem__(path, out) if isinstance(out, Tensor) else None
        )
        for path in stages
    ]
    try:
        with torch.no_grad():
            probe = torch.randn(_PROBE_BATCH, 3, side, side, generator=torch.Generator().manual_seed(0))
            features = model.forward_features(probe)
            if not isinstance(features, Tensor):
                raise _refuse(name, f"`forward_features` returns a {type(features).__name__}, not a tensor")
            layout = _layout(name, features, int(model.num_features), prefix)
            grid = to_grid(features, layout, prefix)
            pool = _pool_type(model)
            cam = _is_pooling_plus_linear(model, features, grid, classifier, pool)
    except RuntimeError as exc:  # a size the architecture cannot take, shapes that do not meet
        raise _refuse(name, f"a forward at {side} x {side} fails ({exc})") from exc
    finally:
        for handle in handles:
            handle.remove()
    if cam:
        classifier_path = f"model.{_module_path(model, classifier)}"
        target, target_layout = "features", layout
    elif pool == "token":
        classifier_path, target, target_layout = None, _last_block_norm(name, model), "tokens"
    else:
        classifier_path, target, target_layout = None, "features", layout
    refine, refine_layout = _refine_layer(model, grid.shape[-1], stage_outputs, stages)
    spec = replace(
        unmeasured,
        target_layer=target_layer or target,
        classifier_layer=classifier_layer or classifier_path,
        categories=_categories(model, num_classes),
        refine_layer=refine,
        layout=target_layout if not target_layer else layout,
        prefix_tokens=prefix if target_layout == "tokens" else 0,
        refine_layout=refine_layout,
        num_classes=num_classes,
    )
    logger.info(
        "%s: %s features, pooling %r, %s, target %s", name, layout, pool, "CAM" if cam else "gradient methods", target
    )
    return spec


def unmeasured_timm_spec(
    name: str, input_size: int | None = None, built: TimmClassifier | None = None, cfg: dict[str, Any] | None = None
):
    """The `ModelSpec` of `timm:ARCH[.TAG]` without the measuring: how to build it, its preprocessing and where its
    published weights are, with the layers and head left at placeholders. An actor takes the measured fields from
    the run's resolved setup (`camray.models.setup`) instead of measuring the model again. `built`, a model
    already built with the default head, is handed out by the first `build` that asks for that head."""
    from camray.models.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

    arch = name.removeprefix(TIMM_PREFIX)
    if cfg is None:
        import timm

        if not timm.is_model(arch):
            raise ValueError(f"`model.name` {name!r} is not a timm model (see `timm.list_models()`)")
        published = timm.models.get_pretrained_cfg(arch)
        cfg = published.to_dict() if published is not None else {}
    held = [built] if built is not None else []
    default_classes = int(cfg.get("num_classes") or 1000)

    def build(num_classes: int | None = None) -> nn.Module:
        if held and num_classes in (None, held[0].model.num_classes):
            return held.pop()
        return _build(arch, input_size, num_classes)[0]

    side = input_size or int(cfg.get("input_size", (3, 224, 224))[-1])
    return ModelSpec(
        name=name,
        build=build,
        target_layer="features",
        classifier_layer=None,
        input_size=side,
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
        categories=(),
        downloaded_weights=lambda: download_pretrained(cfg),
        interpolation=str(cfg.get("interpolation") or "bilinear"),
        num_classes=int(built.model.num_classes) if built is not None else default_classes,
    )


def download_pretrained(cfg: dict[str, Any]) -> tuple[Path, str]:
    """timm's published weights for `cfg` (a `pretrained_cfg`): from the Hugging Face hub (`hf_hub_id`), else its
    `url`, into the local cache; needs internet on first use. Returns the file and its source."""
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    advice = (
        "On a machine without internet, download the weights elsewhere and pass them as `--weights /path/to/file` "
        "or `--weights s3://bucket/key` (config `model.weights`; .safetensors, .pth or .bin)."
    )
    try:
        if hub_id:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            try:
                return Path(hf_hub_download(hub_id, "model.safetensors")), f"hf-hub:{hub_id}/model.safetensors"
            except EntryNotFoundError:  # older uploads hold only the PyTorch pickle (loaded `weights_only`)
                return Path(hf_hub_download(hub_id, "pytorch_model.bin")), f"hf-hub:{hub_id}/pytorch_model.bin"
        if url:
            target = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(url, str(target), progress=False)
            return target, url
    except Exception as exc:  # network, HTTP and hub errors all mean "no download here"
        raise WeightsError(
            f"could not download timm's weights for {cfg.get('architecture')} ({type(exc).__name__}: {exc}). {advice}"
        ) from exc
    raise WeightsError(f"timm publishes no weights for {cfg.get('architecture')}. {advice}")
