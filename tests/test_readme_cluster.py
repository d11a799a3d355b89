"""The README's first steps on a Ray cluster, run as a new user would run them: the lines of its first shell
block under "On a Ray cluster", in order, in a fresh home (no Ray token yet), with token authentication left on.

What the test adds is only what keeps it off other Ray instances on this machine: `ray start --head` gets its
own ports and temp folder, and `--block` so that the test stops exactly the processes it started (never
`ray stop`, which would end every Ray process here); `ray job submit` finds that head through `RAY_ADDRESS`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from ray_helpers import free_port

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", Path(os.sys.executable).parent.parent)) / "bin"

pytestmark = pytest.mark.integration


def readme_cluster_steps() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## On a Ray cluster", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the README's 'On a Ray cluster' section has no shell block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_steps_are_the_ones_this_test_runs():
    steps = readme_cluster_steps()
    assert steps[0] == "source .venv/bin/activate"
    assert "export RAY_AUTH_MODE=token" in steps
    assert steps.index("ray get-auth-token --generate > /dev/null") < steps.index("ray start --head")
    assert any(step.startswith("ray start --head") for step in steps)
    assert any(step.startswith("ray job submit --working-dir . -- python jobs/cam_batch.py") for step in steps)


def test_the_readme_steps_run_on_a_fresh_machine_with_token_auth(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "AWS_"))}
    env.update(HOME=str(home), PATH=f"{VENV_BIN}:{env.get('PATH', '')}", VIRTUAL_ENV=str(VENV_BIN.parent))
    dashboard = free_port()
    head: subprocess.Popen | None = None
    temp_dir: str | None = None
    try:
        for step in readme_cluster_steps():
            words = shlex.split(step)
            if words[:1] == ["source"]:  # activation: PATH above already puts the venv first
                continue
            if words[:1] == ["export"]:
                name, _, value = words[1].partition("=")
                env[name] = value
                continue
            if words[:3] == ["ray", "start", "--head"]:
                ports = {
                    "--port": free_port(),
                    "--dashboard-port": dashboard,
                    "--ray-client-server-port": free_port(),
                    "--dashboard-agent-listen-port": free_port(),
                    "--dashboard-agent-grpc-port": free_port(),
                    "--metrics-export-port": free_port(),
                    "--runtime-env-agent-port": free_port(),
                    "--node-manager-port": free_port(),
                    "--object-manager-port": free_port(),
                }
                extra = [item for flag, port in ports.items() for item in (flag, str(port))]
                # Ray's socket paths must fit in 107 bytes: pytest's tmp_path is too deep for them.
                temp_dir = tempfile.mkdtemp(prefix="camray-ray-", dir="/tmp")
                extra += ["--dashboard-host", "127.0.0.1", "--temp-dir", temp_dir, "--num-cpus", "2"]
                head = subprocess.Popen(
                    [*words, *extra, "--block"],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    start_new_session=True,
                )
                env["RAY_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
                _wait_for_job_server(head, env)
                continue
            assert words[0] == "ray", f"a README step this test does not know: {step}"
            done = subprocess.run(["bash", "-c", step], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            log = done.stdout + done.stderr
            assert done.returncode == 0, f"{step}:\n{log[-4000:]}"
            assert "Missing authentication token" not in log
            if words[:3] == ["ray", "job", "submit"]:
                assert re.search(r"camray run \S+ succeeded: 6 listed", log), log[-4000:]
        assert (home / ".ray" / "auth_token").exists(), "the head made a token and the CLI used it"
    finally:
        if head is not None and head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait()
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_job_server(head: subprocess.Popen, env: dict[str, str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise AssertionError(f"ray start --head exited:\n{head.stdout.read()[-4000:]}")
        listed = subprocess.run(["ray", "job", "list"], env=env, capture_output=True, text=True, timeout=120)
        if listed.returncode == 0:
            return
        time.sleep(2)
    raise AssertionError("the head's job server never answered")
