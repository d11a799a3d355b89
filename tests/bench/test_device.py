"""The device benchmark stays runnable while no GPU is around: `--smoke` runs its code on the CPU, once with
this environment and once as on a bare GPU host, and what must travel to such a host fits the 64 MiB limit."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from camray.bench.device import (
    CARRIED_PACKAGES,
    DECODE_GOAL,
    LABEL_MAPS_GOAL,
    OVERLAP_GOAL,
    PREDICTOR_GOAL,
    SMOKE_PLAN,
    BoxSettings,
    CamSettings,
    MaskSettings,
    ModelSettings,
    TilingSettings,
    export_assets,
    preset_settings,
)
from camray.config import BoxConfig, CamConfig, MasksConfig, ModelConfig, TilingConfig, load_config
from camray.presets import PRESETS

REPO = Path(__file__).resolve().parents[2]
NOT_ON_THE_HOST = ["ray", "pydantic", "duckdb", "boto3"]
# What a bare GPU host lacks besides those: the photo packages, pycocotools, pytorch-grad-cam and its imports.
ABSENT_ON_THE_HOST = [*NOT_ON_THE_HOST, "botocore", "skimage", "matplotlib", "pycocotools", "pytorch_grad_cam"]
CARRY_LIMIT = 64 * 2**20

# Runs the benchmark in this process, then lists which of NOT_ON_THE_HOST it loaded. With `absent`, those
# packages cannot be imported, and the carried ones come only from the assets' `site/`, as on a bare GPU host.
SCRIPT = """
import importlib.machinery, json, sys
absent, carried, forbidden, assets, output = json.loads(sys.argv[1])
for name in absent:
    sys.modules[name] = None  # an import fails; importlib.util.find_spec answers None

class CarriedOnly:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name not in carried:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, [assets + "/site"])
        if spec is None:
            raise ModuleNotFoundError(name)
        return spec

if carried:
    sys.meta_path.insert(0, CarriedOnly)
from camray.bench.device import main
main(["--smoke", "--assets", assets, "--output", output])
loaded = {name.split(".")[0] for name, module in sys.modules.items() if module is not None}
print("LOADED", json.dumps(sorted(loaded & set(forbidden))))
"""


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    return export_assets(tmp_path_factory.mktemp("bench-device") / "assets")


def _smoke(bare: bool, assets: Path, output: Path) -> tuple[dict, list[str]]:
    absent, carried = (ABSENT_ON_THE_HOST, list(CARRIED_PACKAGES)) if bare else ([], [])
    arguments = [absent, carried, NOT_ON_THE_HOST, str(assets), str(output)]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(arguments)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    loaded = json.loads(done.stdout.rsplit("LOADED", 1)[1])
    return json.loads(output.read_text()), loaded


def _check_report(report: dict, peers: set[str]) -> None:
    assert report["smoke"] and report["device"] == "cpu" and report["gpu"] is None
    assert report["versions"]["torch"] and not report["skipped"]
    assert {s["model"] for s in report["settings"]} == {"efficientnet_lite0", "resnet50"}
    for figures in report["settings"]:
        assert not figures["errors"], figures["errors"]
        speeds = figures["images_per_s"]
        stages = {"forward", "prepare", "maps_top5", "predictor", "predictor_reference", "decode", "decode_predictor"}
        stages |= {"predictor_label_maps"}  # the default preset, `balanced`, writes label maps by the dense CRF
        assert stages | {"decode_predictor_overlapped"} <= speeds.keys() and all(v > 0 for v in speeds.values())
        assert figures["predictor_vs_forward"] > 0
        seconds = figures["seconds"]
        assert figures["label_maps_cost"] > 0 and seconds["predictor_label_maps"] > 0
        # The captured box stage (without a graph on the CPU) boxes as the eager steps do, bit for bit.
        check = figures["captured_vs_eager"]
        assert check["identical"] and check["maps_with_other_boxes"] == 0 and check["maps_max_difference"] == 0.0
        if figures["channels_last"]:
            assert peers <= speeds.keys()
    _check_goals(report)


def _check_goals(report: dict) -> None:
    """Each goal's value is the report's own figure at the goals' setting, and its verdict that figure against the
    goal: the predictor against forward-only per model, device decode + predictor for ResNet-50 at its best,
    camray's five maps against each peer's one. A goal not met names what bounds it; on the CPU none applies."""
    batch, precision = max(SMOKE_PLAN.batches), SMOKE_PLAN.precisions[0]
    models = SMOKE_PLAN.models
    goals = report["goals"]
    # Predictor / forward for each model, decode beside the predictor for each model (eager only here), device
    # decode + predictor for ResNet-50, captured == eager, camray's maps against each peer's for each model, and the
    # label maps' cost for each model.
    n = len(models)
    assert len(goals) == 4 * n + 2 and all(goal["applies"] is False for goal in goals)
    predictor = goals[:n]
    overlap = goals[n : 2 * n]
    decode, captured = goals[2 * n], goals[2 * n + 1]
    peers = goals[2 * n + 2 : 3 * n + 2]
    label_maps = goals[3 * n + 2 :]

    def at(model: str) -> dict:
        (figures,) = [
            f
            for f in report["settings"]
            if (f["model"], f["batch"], f["precision"], f["channels_last"], f["compile"])
            == (model, batch, precision, True, False)
        ]
        return figures

    for model, goal in zip(models, predictor, strict=True):
        ratio = at(model)["predictor_vs_forward"]
        assert model in goal["goal"] and goal["value"] == ratio and goal["met"] == (ratio >= PREDICTOR_GOAL), goal
    for model, goal in zip(models, overlap, strict=True):
        speeds = at(model)["images_per_s"]
        ratio = speeds["decode_predictor_overlapped"] / min(speeds["decode"], speeds["predictor"])
        assert model in goal["goal"] and goal["value"] == ratio and goal["met"] == (ratio >= OVERLAP_GOAL), goal
    resnet = [f["images_per_s"]["decode_predictor_overlapped"] for f in report["settings"] if f["model"] == "resnet50"]
    assert decode["value"] == max(resnet) and decode["met"] == (max(resnet) >= DECODE_GOAL), decode
    checks = [f["captured_vs_eager"] for f in report["settings"]]
    assert captured["value"] == {"settings": len(checks), "identical": sum(c["identical"] for c in checks)}
    assert captured["met"] is True, captured
    for model, goal in zip(models, peers, strict=True):
        speeds = at(model)["images_per_s"]
        pairs = {"torchcam_cam_top1": "maps_top5", "pytorch_grad_cam_gradcam_top1": "gradcam_top5"}
        compared = {
            peer: {"peer": speeds[peer], "camray": speeds[ours]} for peer, ours in pairs.items() if peer in speeds
        }
        assert goal["value"] == compared, goal
        assert goal["met"] == all(pair["camray"] >= pair["peer"] for pair in compared.values()), goal
    for model, goal in zip(models, label_maps, strict=True):
        cost = at(model)["label_maps_cost"]
        assert model in goal["goal"] and goal["value"] == cost and goal["met"] == (cost <= LABEL_MAPS_GOAL), goal
    for goal in goals:
        assert (goal["bound_by"] is None) == goal["met"], goal


def test_smoke_runs_every_stage_and_loads_nothing_of_ray_pydantic_duckdb_or_boto3(tmp_path):
    """Without a carried folder: the photos and peers installed here."""
    report, loaded = _smoke(False, tmp_path / "no-assets", tmp_path / "smoke.json")
    assert loaded == []
    _check_report(report, {"torchcam_cam_top1", "pytorch_grad_cam_gradcam_top1", "gradcam_top5"})
    assert all("rows" in figures["images_per_s"] for figures in report["settings"])  # pycocotools is here
    assert "chelsea.png" in report["photos"] and "grace_hopper.jpg" in report["photos"]


def test_smoke_as_on_a_bare_gpu_host_uses_the_carried_photos_weights_and_torchcam(assets, tmp_path):
    report, loaded = _smoke(True, assets, tmp_path / "bare.json")
    assert loaded == []
    _check_report(report, {"torchcam_cam_top1"})
    assert report["photos"] == sorted(path.name for path in (assets / "photos").iterdir())
    assert all("pytorch_grad_cam_gradcam_top1" not in f["images_per_s"] for f in report["settings"])


def test_what_travels_fits_the_limit(assets):
    """The tracked files and the carried folder, the whole of what the device tool sends."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tracked = sum((REPO / name).stat().st_size for name in listed.decode().split("\0") if (REPO / name).is_file())
    carried = sum(path.stat().st_size for path in assets.rglob("*") if path.is_file())
    assert carried > 18 * 2**20  # the premise: the Lite0 weights travel
    assert tracked + carried < CARRY_LIMIT, f"{tracked / 2**20:.1f} + {carried / 2**20:.1f} MiB"


def test_the_carried_folder_is_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "-q", ".bench-device/photos/x.jpg"], cwd=REPO)
    assert ignored.returncode == 0


def test_settings_are_the_configs_fields_and_defaults():
    """The benchmark holds the config's sections as plain dataclasses: the same fields at the same defaults,
    and the same values as `load_config` for every preset."""
    sections = (
        (CamSettings, CamConfig),
        (BoxSettings, BoxConfig),
        (TilingSettings, TilingConfig),
        (MaskSettings, MasksConfig),
    )
    for ours, theirs in sections:
        assert dataclasses.asdict(ours()) == theirs().model_dump(), ours.__name__
    model = dataclasses.asdict(ModelSettings("efficientnet_lite0"))
    assert model == {key: ModelConfig().model_dump()[key] for key in model}
    for name in PRESETS:
        resolved, config = preset_settings(name), load_config(preset=name)
        assert dataclasses.asdict(resolved.cam) == config.cam.model_dump(), name
        assert dataclasses.asdict(resolved.boxes) == config.boxes.model_dump(), name
        assert dataclasses.asdict(resolved.tiling) == config.tiling.model_dump(), name
        assert dataclasses.asdict(resolved.masks) == config.masks.model_dump(), name


def test_the_stage_probe_times_every_step_on_the_cpu(assets, tmp_path):
    from camray.bench.device_stages import main as stages_main

    assert stages_main(["--smoke", "--assets", str(assets), "--output", str(tmp_path / "stages.json")]) == 0
    report = json.loads((tmp_path / "stages.json").read_text())
    assert report["gpu"] is None and set(report["models"]) == {"efficientnet_lite0", "resnet50"}
    for figures in report["models"].values():
        numbers = figures["us_per_image"]
        steps = ["prepare", "forward_cams", "resample_normalize", "refine", "keep_thresholds", "components", "to_host"]
        assert list(numbers["steps"]) == steps and all(value > 0 for value in numbers["steps"].values())
        alone = {"forward", "predictor", "label", "statistics", "maps_to_pageable", "maps_to_pinned"}
        alone |= {"nvjpeg", "decode"}
        assert alone <= numbers.keys() and all(numbers[key] > 0 for key in alone)
        assert figures["grid"] == 16  # a 64-pixel input's 2x2 feature map, upsampled 8x by the balanced preset
