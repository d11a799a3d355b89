import pytest
import torch

from camray.config import ModelConfig
from camray.io.sources import S3Settings
from camray.models import WeightsError, available_models, get_spec, resolve_setup


def test_registry_knows_the_classic_families():
    names = set(available_models())
    for expected in (
        "efficientnet_lite0",
        "resnet50",
        "densenet121",
        "vgg16_bn",
        "mobilenet_v3_large",
        "googlenet",
        "inception_v3",
        "squeezenet1_1",
        "shufflenet_v2_x1_0",
        "convnext_tiny",
    ):
        assert expected in names
    assert get_spec("resnet50").target_layer == "layer4"
    assert get_spec("vgg16").default_method == "gradcam"
    assert get_spec("densenet121").feature_relu


def test_unknown_model_names_the_field():
    with pytest.raises(ValueError, match="`model.name` 'resnet5' is not a registered model"):
        get_spec("resnet5")


def test_offline_torchvision_download_says_how_to_supply_a_file(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached: the download must be attempted
    with pytest.raises(WeightsError, match="--weights /path/to/file.pth"):
        resolve_setup(ModelConfig(name="resnet18"))


def test_weights_from_a_local_file_with_sha256(tmp_path, lite0):
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    loaded = resolve_setup(ModelConfig(name="resnet18", weights=str(path)))
    assert loaded.weights_sha256 and loaded.spec.name == "resnet18"
    with pytest.raises(WeightsError, match="expected 00"):
        resolve_setup(ModelConfig(name="resnet18", weights=str(path), weights_sha256="00" * 32))
    with pytest.raises(WeightsError, match="do not fit resnet34"):
        resolve_setup(ModelConfig(name="resnet34", weights=str(path)))


@pytest.mark.integration
def test_weights_from_s3_are_cached(s3_server, tmp_path, monkeypatch):
    import boto3
    import torchvision

    from camray.models import weights as weights_module

    monkeypatch.setattr(weights_module, "CACHE_DIR", tmp_path / "cache")
    state = torchvision.models.shufflenet_v2_x0_5(weights=None).state_dict()
    local = tmp_path / "shuffle.pth"
    torch.save(state, local)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="camray-weights")
    s3.upload_file(str(local), "camray-weights", "models/shuffle.pth")
    uri = "s3://camray-weights/models/shuffle.pth"
    loaded = resolve_setup(ModelConfig(name="shufflenet_v2_x0_5", weights=uri), s3=S3Settings())
    assert loaded.weights_source == uri
    # One copy; beside it only the hidden lock that makes actors of one node wait for a single download.
    cached = [path for path in (tmp_path / "cache").iterdir() if not path.name.startswith(".")]
    assert len(cached) == 1
    resolve_setup(ModelConfig(name="shufflenet_v2_x0_5", weights=uri), s3=S3Settings())
    assert [path for path in (tmp_path / "cache").iterdir() if not path.name.startswith(".")] == cached


def test_custom_model_needs_its_target_layer():
    with pytest.raises(ValueError, match="set `model.target_layer`"):
        get_spec("torchvision.models:resnet18")
    spec = get_spec("torchvision.models:resnet18", target_layer="layer4", classifier_layer="fc")
    assert spec.default_method == "cam"


def test_a_wrong_target_layer_lists_the_real_ones(tmp_path):
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="`model.target_layer` 'layer5' is not a layer.*layer4"):
        resolve_setup(ModelConfig(name="resnet18", weights=str(path), target_layer="layer5"))


def test_a_custom_model_loads_with_its_weights_and_layers(tmp_path):
    import torchvision

    from camray.cam.methods import MapExtractor

    path = tmp_path / "mine.pth"
    torch.save({"state_dict": torchvision.models.resnet18(weights=None).state_dict()}, path)  # a checkpoint
    config = ModelConfig(
        name="torchvision.models:resnet18", weights=str(path), target_layer="layer4", classifier_layer="fc"
    )
    loaded = resolve_setup(config)
    _, maps, class_ids = MapExtractor(loaded.module, loaded.spec, "cam")(torch.randn(1, 3, 96, 96), 2)
    assert maps.shape == (1, 2, 3, 3) and class_ids.shape == (1, 2)
    with pytest.raises(WeightsError, match="`model.weights` is required"):
        resolve_setup(ModelConfig(name="torchvision.models:resnet18", target_layer="layer4"))


def test_a_lite_predictor_never_imports_torchvision_or_timm():
    """The bundled models' path (driver checks, predictor actors) leaves torchvision and timm unloaded: their import
    pulls in `torch._dynamo`, 2.5 s of CPU in every such process. Its labels are torchvision's own."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "from camray.config import load_config\n"
        "from camray.models.registry import imagenet_categories\n"
        "from camray.predictor import Predictor\n"
        "from camray.runner import resolve_run_setup, storage_settings\n"
        "config = load_config(overrides={'sink.uri': 'unused'})\n"
        "setup = resolve_run_setup(config, storage_settings(config))\n"
        "Predictor(config.model_dump(mode='json'), setup.to_plain(), 'run', {})\n"
        "assert 'torchvision' not in sys.modules and 'torch._dynamo' not in sys.modules, 'torchvision was imported'\n"
        "assert 'timm' not in sys.modules, 'timm was imported'\n"
        "import torchvision.models._meta as meta\n"
        "assert imagenet_categories() == tuple(meta._IMAGENET_CATEGORIES)\n"
        "assert len(imagenet_categories()) == 1000\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
