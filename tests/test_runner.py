"""The run's steps: resource planning (what a job asks of the cluster, by cluster shape and config), and how a run
ends: failed when camray's own code fails, or when every image fails alike."""

from pathlib import Path

import pytest

from camray.config import load_config
from camray.planning import WRITE_CPUS, plan_resources


def _plan(cluster, **overrides):
    return plan_resources(load_config(overrides={"sink.uri": "out", **overrides}), cluster)


def test_gpu_cluster_one_actor_per_gpu_with_large_batches():
    plan = _plan({"CPU": 32.0, "GPU": 4.0})
    assert (plan.num_actors, plan.gpus_per_actor, plan.cpus_per_actor, plan.batch_size) == (4, 1.0, 1.0, 256)


def test_gpu_actors_decode_on_the_device_with_two_batches_in_hand_unless_configured():
    """`runtime.decode: auto` decodes where the model runs on a GPU; an actor there holds two batches (one loading,
    one computing); what the config names wins, and the CPU keeps one batch an actor, decoded in the read tasks."""
    gpu = {"CPU": 32.0, "GPU": 4.0}
    assert (_plan(gpu).decode, _plan(gpu).calls_per_actor) == ("device", 2)
    assert (_plan({"CPU": 8.0}).decode, _plan({"CPU": 8.0}).calls_per_actor) == ("cpu", 1)
    assert _plan(gpu, **{"runtime.decode": "cpu"}).decode == "cpu"
    assert _plan({"CPU": 8.0}, **{"runtime.decode": "device"}).decode == "device"
    on_cpu = _plan(gpu, **{"model.device": "cpu"})  # GPUs reserved, but the model asked to run on the CPU
    assert (on_cpu.decode, on_cpu.calls_per_actor) == ("cpu", 1)
    assert _plan(gpu, **{"runtime.batch_size": 64}).batch_size == 64


@pytest.mark.parametrize("cpus", [1.0, 2.0, 4.0, 16.0])
def test_cpu_cluster_single_threaded_actors_leave_room_to_decode(cpus):
    plan = _plan({"CPU": cpus})
    assert plan.gpus_per_actor == 0 and plan.cpu_threads == 1 and plan.batch_size == 16
    assert plan.num_actors == int(cpus)
    # The actors never take so much that no read+decode task (0.5 CPU) and write task fit beside them.
    assert plan.num_actors * plan.cpus_per_actor + 0.5 + WRITE_CPUS <= cpus
    assert plan.cpus_per_actor != 0.5  # equal to the decode tasks', Ray Data would fuse the two stages


def test_configured_values_win():
    plan = _plan({"CPU": 16.0}, **{"runtime.cpu_threads": 4, "runtime.num_actors": 2, "runtime.cpus_per_actor": 3.0})
    assert (plan.num_actors, plan.cpu_threads, plan.cpus_per_actor) == (2, 4, 3.0)
    assert _plan({"CPU": 16.0}, **{"runtime.cpu_threads": 4}).num_actors == 4


def test_no_more_actors_than_batches_unless_configured():
    cluster = {"CPU": 8.0}
    assert _plan(cluster).num_actors == 8
    assert _plan(cluster, **{"runtime.batch_size": 4}).num_actors == 8
    assert (
        plan_resources(load_config(overrides={"sink.uri": "out", "runtime.batch_size": 4}), cluster, 6).num_actors == 2
    )
    assert plan_resources(load_config(overrides={"sink.uri": "out"}), cluster, 0).num_actors == 1
    configured = load_config(overrides={"sink.uri": "out", "runtime.num_actors": 5})
    assert plan_resources(configured, cluster, 3).num_actors == 5


def test_blocks_hold_one_read_batch_and_the_store_budget_follows_the_pool_not_the_input():
    config = load_config(overrides={"sink.uri": "out"})
    small = plan_resources(config, {"CPU": 2.0}, 5_000)
    large = plan_resources(config, {"CPU": 2.0}, 5_000_000)
    assert small == large  # nothing of the memory plan grows with the input
    canvas = 224 * 224 * 3
    assert (
        config.runtime.decode_batch_size * canvas <= small.block_bytes < 2 * config.runtime.decode_batch_size * canvas
    )
    tiled = plan_resources(config, {"CPU": 2.0}, 5_000, canvas_side=560)
    assert tiled.block_bytes > small.block_bytes
    # Room for the actors' read-ahead and one Parquet file's rows waiting for their write.
    assert small.object_store_bytes >= 256 * 2**20 + config.sink.rows_per_file * 16 * 2**10
    gpus = plan_resources(config, {"CPU": 64.0, "GPU": 8.0}, 5_000_000)
    assert gpus.object_store_bytes >= gpus.num_actors * 8 * gpus.batch_size * canvas
    configured = load_config(overrides={"sink.uri": "out", "runtime.object_store_mib": 1024})
    assert plan_resources(configured, {"CPU": 2.0}).object_store_bytes == 1024 * 2**20


def test_a_failed_run_is_named_by_what_camray_raised_not_by_rays_wrapper():
    """A task's failure reaches the driver as Ray's `RayTaskError`, whose text is the worker's traceback: causes,
    the exception the task raised, then Ray's `UserCodeException`. The run names the one the task raised."""
    from ray.exceptions import RayTaskError, UserCodeException

    from camray.io.s3 import StoreUnavailableError
    from camray.runner import failure_message

    worker = """Traceback (most recent call last):
  File "camray/result_rows.py", line 90, in result_table
    categories.take(ids)
ValueError: index 1000 out of bounds

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "camray/predictor.py", line 191, in _annotate_table
    raise KeyError("no label for class 1000") from exc
KeyError: 'no label for class 1000'

The above exception was the direct cause of the following exception:

ray::MapWorker(MapBatches(Predictor)).submit() (pid=1, ip=10.0.0.1)
ray.exceptions.UserCodeException: UDF failed to process a data block.
Failed to apply UDF transform after 1/1 attempts."""
    wrapped = RayTaskError("submit", worker, UserCodeException("UDF failed to process a data block."))
    assert failure_message(wrapped) == "KeyError: 'no label for class 1000'"
    assert failure_message(wrapped.as_instanceof_cause()) == "KeyError: 'no label for class 1000'"
    assert (
        failure_message(RuntimeError("run r holds 2 duplicate rows\nmore"))
        == "RuntimeError: run r holds 2 duplicate rows"
    )
    outage = worker.replace(
        "KeyError: 'no label for class 1000'", "camray.io.s3.StoreUnavailableError: S3 GetObject down"
    )
    assert failure_message(RayTaskError("read", outage, UserCodeException("UDF failed"))) == "S3 GetObject down"
    assert failure_message(StoreUnavailableError("S3 PutObject down")) == "S3 PutObject down"


def _not_an_image(path) -> None:
    """A text file under an image's name, as a failed export leaves them: undecodable, `UnidentifiedImageError`."""
    path.write_bytes(b"exported by mistake: not an image\n")


@pytest.mark.integration
def test_a_night_of_nothing_but_bad_new_files_fails_once_then_commits_their_errors(ray_cluster, photos, tmp_path):
    """Nightly runs over one folder. Good photos and one bad file succeed with its error row; the bad file alone,
    retried the next night, does not fail the night; then every new file fails alike: the run is `failed`,
    naming the stage and the error, and commits nothing; the night after resumes it and commits those rows. Each
    night's error row of the bad file replaces the night before's: one current row, the older ones by time travel."""
    from readers import delta_rows

    from camray.runner import run_job

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        (folder / name).write_bytes(photos[name])
    _not_an_image(folder / "export-1.jpg")
    config = load_config(overrides={"source.uri": str(folder), "sink.uri": str(out), "runtime.batch_size": 4})

    first = run_job(config)
    assert (first.status, first.results, first.errors) == ("succeeded", 2, 1)
    second = run_job(config)  # the bad file again, alone: one image cannot tell a broken job from a bad file
    assert (second.status, second.skipped, second.results, second.errors) == ("succeeded", 2, 0, 1)
    for index in (2, 3):
        _not_an_image(folder / f"export-{index}.jpg")
    third = run_job(config)
    assert (third.status, third.processed, third.results) == ("failed", 3, 0)
    assert third.message.startswith("all 3 images failed at stage `decode` with UnidentifiedImageError, e.g. ")
    assert delta_rows(out, "errors", ["run_id"]).column("run_id").to_pylist() == [second.run_id]
    fourth = run_job(config)
    assert (fourth.run_id, fourth.attempt, fourth.status) == (third.run_id, 2, "succeeded")
    assert (fourth.processed, fourth.resumed, fourth.errors) == (0, 3, 3)

    runs = {(run["run_id"], run["attempt"]): run for run in delta_rows(out, "runs").to_pylist()}
    assert runs[(third.run_id, 1)]["status"] == "failed" and runs[(third.run_id, 1)]["message"] == third.message

    def errors(version: int | None = None) -> list[tuple[str, str]]:
        rows = delta_rows(out, "errors", ["run_id", "image_uri"], version).to_pylist()
        return sorted((row["run_id"], row["image_uri"].rsplit("/", 1)[-1]) for row in rows)

    assert errors() == [(third.run_id, f"export-{index}.jpg") for index in (1, 2, 3)]
    # The errors table's versions: created empty, then the first night's row, the second's in its place.
    assert [errors(version) for version in (1, 2)] == [
        [(first.run_id, "export-1.jpg")],
        [(second.run_id, "export-1.jpg")],
    ]


@pytest.mark.integration
def test_a_bug_in_camray_s_own_code_fails_the_run_in_one_call(ray_address, photos, tmp_path):
    """The predictor's row builder raises (`broken_rows_lite0` of `tests/faulty_models.py`): the run fails with
    that error in its runs row and on stderr (one line; the traceback in its log), after one call of the builder,
    not one per image, and nothing is committed."""
    import os
    import subprocess
    import sys

    from readers import delta_rows

    from camray.models import get_spec

    repo = Path(__file__).resolve().parents[1]
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png", "rocket.jpg", "astronaut.png"):
        (folder / name).write_bytes(photos[name])
    model = [
        "--model",
        "tests.faulty_models:broken_rows_lite0",
        "--model.weights",
        get_spec("efficientnet_lite0").bundled_weights(),
    ]
    model += ["--model.target_layer", "features", "--model.classifier_layer", "classifier.1"]
    one_batch = ["--runtime.batch_size", "8", "--runtime.decode_batch_size", "8", "--runtime.num_actors", "1"]
    ran = subprocess.run(
        [sys.executable, "jobs/cam_batch.py", "--input", str(folder), "--output", str(out), *model, *one_batch],
        cwd=repo,
        # Ray puts the driver's working folder, the checkout, on its workers' paths: `tests.` reaches them.
        env={**os.environ, "RAY_ADDRESS": ray_address},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 1, (ran.stdout + ran.stderr)[-4000:]
    *_, saved, line = ran.stderr.strip().splitlines()
    assert line.startswith("camray: run failed: RuntimeError: deliberately broken row builder: call 1 in process "), (
        line
    )
    (run,) = delta_rows(out, "runs").to_pylist()
    assert run["status"] == "failed" and run["message"] == line.removeprefix("camray: run failed: ")
    log = Path(saved.removeprefix("log: ")).read_text()
    assert "Traceback" in log and "broken_result_table" in log and "Traceback" not in ran.stderr
    assert delta_rows(out, "results").num_rows == delta_rows(out, "errors").num_rows == 0  # nothing committed
