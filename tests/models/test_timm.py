"""`timm:NAME`: what timm's own API tells camray about a model, its weights, and the maps against pytorch-grad-cam."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from zoo import published_shaped_state

from camray.cam.methods import MapExtractor
from camray.config import ModelConfig
from camray.io.sources import S3Settings
from camray.models import WeightsError, get_spec, resolve_setup
from camray.models.weights import sha256_of

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "method", "layout", "prefix", "target", "classifier", "refine"),
    [
        # pooling + fc: CAM on the last stage, refined by the stride-16 stage.
        ("timm:resnet10t", "cam", "nchw", 0, "features", "model.fc", "model.layer3"),
        # a LayerNorm between the pooling and the fc: gradient methods only.
        ("timm:convnext_atto", "gradcam", "nchw", 0, "features", None, "model.stages.2"),
        # channels-last tokens, averaged then one linear layer: CAM on the token grid.
        ("timm:swin_tiny_patch4_window7_224", "cam", "nhwc", 0, "features", "model.head.fc", "model.layers.2"),
        # a class-token head: gradients at the last block's input, one token grid throughout (nothing to refine).
        ("timm:vit_tiny_patch16_224", "gradcam", "tokens", 1, "model.blocks.11.norm1", None, None),
        ("timm:deit_tiny_distilled_patch16_224", "gradcam", "tokens", 2, "model.blocks.11.norm1", None, None),
    ],
)
def test_the_spec_comes_from_timms_api(name, method, layout, prefix, target, classifier, refine):
    spec = get_spec(name, input_size=64)
    assert (spec.default_method, spec.layout, spec.prefix_tokens) == (method, layout, prefix)
    assert (spec.target_layer, spec.classifier_layer, spec.refine_layer) == (target, classifier, refine)
    assert spec.input_size == 64 and spec.interpolation == "bicubic" and len(spec.categories) == 1000
    assert spec.categories[:2] == ("tench", "goldfish")


def test_preprocessing_comes_from_the_pretrained_cfg():
    import timm

    for name in ("resnet10t", "vit_tiny_patch16_224.augreg_in21k_ft_in1k"):
        cfg = timm.models.get_pretrained_cfg(name)
        spec = get_spec(f"timm:{name}")
        assert (spec.input_size, spec.mean, spec.std) == (cfg.input_size[-1], tuple(cfg.mean), tuple(cfg.std))
        assert spec.interpolation == cfg.interpolation
    assert get_spec("timm:resnet10t").input_size == 176  # its weights' training size, not 224


def test_cam_on_a_token_grid_is_exact():
    """Swin's CAM: each class map's mean over the token grid plus the class bias is the class logit."""
    spec = get_spec("timm:swin_tiny_patch4_window7_224", input_size=64)
    module = spec.build().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    logits, maps, class_ids = MapExtractor(module, spec, "cam")(x, 3)
    bias = module.get_submodule(spec.classifier_layer).bias.detach()
    torch.testing.assert_close(maps.mean((-2, -1)) + bias[class_ids], logits.gather(1, class_ids), atol=1e-4, rtol=0)
    assert maps.shape == (2, 3, 2, 2)


def test_models_camray_cannot_explain_are_refused_naming_them():
    with pytest.raises(ValueError, match="'timm:eva02_tiny_patch14_224': camray cannot explain this model: it has no"):
        get_spec("timm:eva02_tiny_patch14_224")  # a pretraining checkpoint without a classifier
    with pytest.raises(ValueError, match="`model.name` 'timm:resnet_9000' is not a timm model"):
        get_spec("timm:resnet_9000")


def test_an_unexplainable_model_exits_2_before_any_work(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "cam_batch.py"), "--model", "timm:eva02_tiny_patch14_224"]
        + ["--output", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "camray cannot explain this model" in done.stderr, done.stdout + done.stderr
    assert not out.exists()


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _vit_reshape(tokens: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT `reshape_transform`: drop the class token, lay the rest on their grid."""
    side = int((tokens.shape[1] - 1) ** 0.5)
    return tokens[:, 1:, :].reshape(tokens.shape[0], side, side, tokens.shape[2]).permute(0, 3, 1, 2)


@pytest.mark.parametrize(
    ("name", "size", "reshape"),
    [("timm:convnext_atto", 96, None), ("timm:vit_tiny_patch16_224", 96, _vit_reshape)],
    ids=["cnn", "transformer"],
)
def test_gradcam_maps_equal_pytorch_grad_cam(name, size, reshape):
    """The batched maps of all top-k classes, against pytorch-grad-cam 1.5.7 run one class rank at a time on the
    same target layer, both scaled by its own `scale_cam_image`: Pearson r >= 0.99 per map."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    top_k = 3
    spec = get_spec(name, input_size=size)
    module = spec.build().eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    _, maps, class_ids = MapExtractor(module, spec, "gradcam")(x, top_k)
    ours = maps.numpy()
    compared = 0
    with GradCAM(
        model=module, target_layers=[module.get_submodule(spec.target_layer)], reshape_transform=reshape
    ) as cam:
        for rank in range(top_k):
            targets = [ClassifierOutputTarget(int(c)) for c in class_ids[:, rank]]
            theirs = cam(input_tensor=x, targets=targets)
            scaled = scale_cam_image(ours[:, rank], (size, size))
            for image in range(x.shape[0]):
                if theirs[image].std() == 0:  # no positive evidence: flat in both
                    assert scaled[image].std() == 0
                    continue
                assert _pearson(scaled[image], theirs[image]) >= 0.99, (name, rank, image)
                compared += 1
    assert compared >= top_k * x.shape[0] - 1


@pytest.mark.integration
def test_weights_from_a_safetensors_file_or_s3_with_sha256(s3_server, tmp_path, monkeypatch):
    import boto3
    from safetensors.torch import save_file

    from camray.models import weights as weights_module

    monkeypatch.setattr(weights_module, "CACHE_DIR", tmp_path / "cache")
    name = "timm:regnetx_002"
    reference = get_spec(name).build().model
    path = tmp_path / "model.safetensors"
    save_file(published_shaped_state(reference), str(path))
    loaded = resolve_setup(ModelConfig(name=name, weights=str(path), weights_sha256=sha256_of(path)))
    assert loaded.weights_sha256 == sha256_of(path) and loaded.weights_source == str(path)
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.module.model.state_dict()[key], value), key
    with pytest.raises(WeightsError, match="expected 00"):
        resolve_setup(ModelConfig(name=name, weights=str(path), weights_sha256="00" * 32))
    with pytest.raises(WeightsError, match="do not fit timm:regnetx_004"):
        resolve_setup(ModelConfig(name="timm:regnetx_004", weights=str(path)))
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="camray-timm")
    s3.upload_file(str(path), "camray-timm", "regnet/model.safetensors")
    uri = "s3://camray-timm/regnet/model.safetensors"
    from_s3 = resolve_setup(ModelConfig(name=name, weights=uri, weights_sha256=sha256_of(path)), s3=S3Settings())
    assert from_s3.weights_source == uri and from_s3.weights_sha256 == sha256_of(path)


def test_a_pickle_is_loaded_as_data_only(tmp_path):
    """A `.pth` whose pickle would run code is refused (`weights_only=True`); a plain state dict loads."""
    name = "timm:resnet10t"
    state = get_spec(name).build().model.state_dict()
    good = tmp_path / "good.pth"
    torch.save(state, good)
    assert resolve_setup(ModelConfig(name=name, weights=str(good))).weights_source == str(good)
    evil = tmp_path / "evil.pth"
    torch.save({**state, "payload": _RunsCode()}, evil)
    with pytest.raises(WeightsError, match="could not be loaded as a state dict"):
        resolve_setup(ModelConfig(name=name, weights=str(evil)))


class _RunsCode:
    def __reduce__(self):
        return (print, ("unpickling ran code",))


def test_without_internet_the_published_weights_say_how_to_supply_a_file(monkeypatch, tmp_path):
    from huggingface_hub import constants

    # The hub's offline mode (HF_HUB_OFFLINE=1, read once at import) fails as a node without internet does, without
    # the minute of retries; an empty cache holds nothing to fall back on.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match=r"could not download timm's weights for resnet10t.*--weights /path/to/file"):
        resolve_setup(ModelConfig(name="timm:resnet10t"))


def test_the_driver_and_each_predictor_build_the_model_once(monkeypatch, tmp_path):
    """The driver builds and measures the model once (its probe forward included); an actor builds it once from
    the resolved setup, measuring nothing."""
    import timm
    from safetensors.torch import save_file

    from camray.config import load_config
    from camray.predictor import Predictor

    path = tmp_path / "model.safetensors"
    save_file(published_shaped_state(get_spec("timm:resnet10t").build().model), str(path))
    builds = []
    create_model = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: builds.append(a) or create_model(*a, **k))
    config = load_config(overrides={"model.name": "timm:resnet10t", "model.weights": str(path), "sink.uri": "x"})
    setup = resolve_setup(config.model, config.cam, config.tiling).setup
    assert builds == [("resnet10t",)]
    predictor = Predictor(config.model_dump(mode="json"), setup.to_plain(), "run", {})
    assert builds == [("resnet10t",)] * 2 and predictor.annotator.method == "cam"


def test_the_read_tasks_resize_with_the_models_interpolation(tmp_path):
    """The driver's model check hands the read+decode tasks its preprocessing: a timm model trained on bicubic
    resizes gets bicubic canvases; a bundled Lite model bilinear ones, as before."""
    from safetensors.torch import save_file

    from camray.config import load_config
    from camray.runner import resolve_run_setup, storage_settings

    path = tmp_path / "model.safetensors"
    save_file(published_shaped_state(get_spec("timm:resnet10t").build().model), str(path))
    timm_config = load_config(overrides={"model.name": "timm:resnet10t", "model.weights": str(path), "sink.uri": "x"})
    lite_config = load_config(overrides={"sink.uri": "x"})
    assert resolve_run_setup(timm_config, storage_settings(timm_config)).interpolation == "bicubic"
    assert resolve_run_setup(lite_config, storage_settings(lite_config)).interpolation == "bilinear"
