"""A checkpoint's own head and its class names: the head's size from the weights, the key layouts training code
writes, labels files, label tokens resolved against the names, and the refusals (exit 2, before any work)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torchvision

from camray.config import ModelConfig
from camray.io.sources import S3Settings
from camray.models import LabelResolver, UnknownLabel, WeightsError, load_model, resolve_setup
from camray.models.heads import strip_wrappers
from camray.models.labels import class_names, read_labels
from camray.models.registry import get_spec


def test_labels_files_as_text_or_json(tmp_path):
    text = tmp_path / "names.txt"
    text.write_bytes(b"\xef\xbb\xbfcat\r\ndog\r\nhot dog\r\n\r\n")
    assert read_labels(str(text), S3Settings()) == ("cat", "dog", "hot dog")
    listed = tmp_path / "names.json"
    listed.write_text(json.dumps(["a", "b"]))
    assert read_labels(str(listed), S3Settings()) == ("a", "b")
    listed.write_text(json.dumps({"0": "a"}))
    with pytest.raises(ValueError, match="JSON list of class names"):
        read_labels(str(listed), S3Settings())
    text.write_text("a\n\nb\n")
    with pytest.raises(ValueError, match="class 1 has an empty name"):
        read_labels(str(text), S3Settings())
    with pytest.raises(ValueError, match="cannot be read"):
        read_labels(str(tmp_path / "missing.txt"), S3Settings())


def test_class_names_by_file_default_or_number(tmp_path, caplog):
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\n")
    assert class_names(3, str(names), None, S3Settings()) == ("a", "b", "c")
    with pytest.raises(ValueError, match="holds 3 class names, but the model's head has 20 outputs"):
        class_names(20, str(names), None, S3Settings())
    assert class_names(2, None, ("x", "y"), S3Settings()) == ("x", "y")
    with caplog.at_level(logging.WARNING, logger="camray.models.labels"):
        assert class_names(3, None, ("x", "y"), S3Settings()) == ("class_0", "class_1", "class_2")
    assert len(caplog.records) == 1 and "no `model.labels`" in caplog.text


def test_label_tokens_resolve_by_name_first_then_by_id():
    resolver = LabelResolver(("cat", "7", "crane", "crane", "dog"))
    assert resolver.class_ids(["dog", "cat", "dog"]) == [4, 0]
    assert resolver.class_id("7") == 1  # a name that looks like an id is the name
    assert resolver.class_id("0") == 0 and resolver.class_id(" 4 ") == 4
    with pytest.raises(UnknownLabel, match="'cow' is no class of the model"):
        resolver.class_id("cow")
    with pytest.raises(UnknownLabel, match=r"'5' is no class id of the model's head \(0 to 4\)"):
        resolver.class_id("5")
    with pytest.raises(UnknownLabel, match="'crane' names 2 classes of the model .2, 3.: give its id"):
        resolver.class_id("crane")


def test_training_wrappers_come_off_unless_the_model_carries_them():
    weights = {"module.model.fc.weight": torch.zeros(1), "module.model.fc.bias": torch.zeros(1)}
    assert set(strip_wrappers(weights, {"fc.weight": 0, "fc.bias": 0})) == {"fc.weight", "fc.bias"}
    compiled = {"_orig_mod.fc.weight": torch.zeros(1)}
    assert set(strip_wrappers(compiled, {"fc.weight": 0})) == {"fc.weight"}
    # A timm wrapper's own keys start with `model.`: that prefix is the model's, not a wrapper's.
    assert set(strip_wrappers({"model.fc.weight": torch.zeros(1)}, {"model.fc.weight": 0})) == {"model.fc.weight"}


def test_a_head_of_any_size_from_the_weights_and_the_actor_loads_the_same(tmp_path):
    """Lite0's published weights in their reference layout with a 20-class `_fc` (fine-tuned), and a torchvision
    ResNet-18 with 7 outputs in a Lightning-style checkpoint: each built with the weights' head; an actor loads
    the same network from the plain setup, and refuses weights that changed since."""
    lite = get_spec("efficientnet_lite0")
    state = torch.load(lite.bundled_weights(), weights_only=True)
    state["_fc.weight"], state["_fc.bias"] = torch.randn(20, 1280), torch.zeros(20)
    path = tmp_path / "lite0-20.pth"
    torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}}, path)
    loaded = resolve_setup(ModelConfig(name="efficientnet_lite0", weights=str(path)))
    assert loaded.setup.num_classes == 20 and loaded.setup.class_names[19] == "class_19"
    assert torch.equal(loaded.module.classifier[1].weight, state["_fc.weight"])

    resnet = tmp_path / "resnet18-7.ckpt"
    model = torchvision.models.resnet18(num_classes=7)
    torch.save({"epoch": 1, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, resnet)
    names = tmp_path / "names.json"
    names.write_text(json.dumps([f"part {index}" for index in range(7)]))
    config = ModelConfig(name="resnet18", weights=str(resnet), labels=str(names), head="sigmoid")
    resolved = resolve_setup(config)
    setup = resolved.setup
    assert (setup.num_classes, setup.class_names[6], setup.head, setup.method) == (7, "part 6", "sigmoid", "cam")
    again = load_model(type(setup).from_plain(setup.to_plain()))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(again.module(x), resolved.module(x)) and again.module(x).shape == (1, 7)
    torch.save({"state_dict": model.state_dict()}, resnet)  # rewritten after the driver resolved the run
    with pytest.raises(WeightsError, match="expected"):
        load_model(setup)
