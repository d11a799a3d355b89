"""The README and docs/ say only what is true of this checkout: the README stays short, every link and path it
or a document names exists, and every `camray` command, `ray job submit` entry point and `make` target in their
shell blocks is one the code accepts (flags parsed by the real parsers, job configs validated by the real loader).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from camray.cli import build_camray_parser, build_parser, overrides_from_args
from camray.config import JobConfig, load_config

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def _names(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(REPO)) for path in paths]


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def _shell_lines(text: str) -> list[str]:
    lines = []
    for language, body in FENCE.findall(text):
        if language == "bash":
            lines += [line.strip() for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    return lines


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_links_lead_to_files_that_exist(document):
    for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
        if target.startswith(("http://", "https://", "#")):
            continue
        assert (document.parent / target.split("#", 1)[0]).exists(), f"{document.name} links to {target}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_named_repository_paths_exist(document):
    named = re.findall(r"`((?:camray|jobs|infra|docs|tests)/[\w./-]*)`", _prose(document.read_text()))
    missing = [path for path in named if not (REPO / path).exists()]
    assert not missing, f"{document.name} names paths that do not exist: {missing}"


def _job_arguments(line: str) -> list[str] | None:
    """The arguments of `camray run` or of `python jobs/cam_batch.py` (also after `ray job submit ... --`)."""
    words = shlex.split(line, comments=True)
    if words[:2] == ["camray", "run"]:
        return words[2:]
    for start in range(len(words) - 1):
        if words[start : start + 2] == ["python", "jobs/cam_batch.py"]:
            return words[start + 2 :]
    return None


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_shell_commands_are_ones_the_code_accepts(document, monkeypatch):
    monkeypatch.chdir(REPO)  # config paths in the examples are relative to the repository
    makefile = (REPO / "Makefile").read_text()
    for line in _shell_lines(document.read_text()):
        if "..." in line or "<" in line:  # a placeholder, not a command to run as written
            continue
        words = shlex.split(line, comments=True)
        arguments = _job_arguments(line)
        if arguments is not None:
            try:
                args = build_parser().parse_args(arguments)
            except SystemExit:
                pytest.fail(f"{document.name}: the job does not accept: {line}")
            load_config(args.config, overrides_from_args(args), args.preset)
        elif words[:1] == ["camray"]:
            try:
                build_camray_parser().parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"{document.name}: camray does not accept: {line}")
        elif words[:1] == ["make"]:
            assert re.search(rf"^{re.escape(words[1])}:", makefile, re.M), f"no make target {words[1]}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_yaml_examples_are_valid_job_configs(document, tmp_path):
    """A YAML block that names any of the job config's top-level keys is a job config, whole; others (a Prometheus
    config in the monitoring doc) are some other program's."""
    job_keys = {*JobConfig.model_fields, "preset"}
    for index, (language, body) in enumerate(FENCE.findall(document.read_text())):
        parsed = yaml.safe_load(body) if language == "yaml" else None
        if isinstance(parsed, dict) and job_keys & parsed.keys():
            path = tmp_path / f"example-{index}.yaml"
            path.write_text(body)
            load_config(path)


def test_readme_queries_are_among_the_ones_the_output_tests_run():
    """tests/outputs/test_local.py runs every `camray query --output output` line of docs/output.md."""
    documented = set(_shell_lines((REPO / "docs" / "output.md").read_text()))
    queries = [line for line in _shell_lines(README.read_text()) if line.startswith("camray query --output output ")]
    assert queries and set(queries) <= documented


def test_architecture_tree_has_one_line_per_folder():
    text = (REPO / "docs" / "architecture.md").read_text()
    tree = re.search(r"## The tree\n.*?```\n(.*?)```", text, re.S)
    assert tree, "docs/architecture.md has no tree"
    folders = [line.split()[0] for line in tree.group(1).splitlines() if line.strip()]
    packages = sorted(f"{path.parent.relative_to(REPO)}/" for path in (REPO / "camray").rglob("__init__.py"))
    assert sorted(folders) == sorted([*packages, "jobs/", "infra/", "docs/", "tests/"])


def test_architecture_names_every_module():
    text = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`(camray/[\w/]+\.py)`", text))
    modules = {
        str(path.relative_to(REPO))
        for path in (REPO / "camray").rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }
    assert not modules - named, f"docs/architecture.md's module table lacks {sorted(modules - named)}"
