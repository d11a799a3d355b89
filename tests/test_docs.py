"""The README and docs/ say only what is true of this checkout. Each check reads what the documents contain:

- links lead to files that exist, and `#anchors` to their headings;
- repository paths (`camray/io/sink.py`) exist, and dotted Python names (`camray.io.schema.decode_mask`) import;
- every shell command of `camray`, `python jobs/cam_batch.py` (also after `ray job submit ... --`) and `make` is one
  the code accepts, with placeholders (`<file>`, `...`) stood in for: flags parsed by the real parsers, job configs
  validated by the real loader, targets found in the Makefile;
- inline `camray VERB ...` commands use that verb's flags, and every other `--flag` named in prose is one that
  camray, its benchmarks and evaluation tools, Ray's CLI or a program the docs configure takes;
- config fields named in prose (`sink.incremental`, `--runtime.decode`) are fields of the config, and `make`
  targets named in prose are the Makefile's;
- and no document goes unchecked: each holds some claim that one of these checks reads.

Two claims are checked against what the code does: `make test-fast` leaves out every test that starts Ray or S3,
and the version a listing gives an input is the one the docs describe.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import textwrap
from pathlib import Path

import pytest
import yaml

from camray.cli import build_camray_parser, build_parser, overrides_from_args
from camray.config import DEPRECATED_FIELDS, JobConfig, load_config

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]
# A fenced block, at any indentation (inside a list item too), and an inline code span (``double`` or `single`).
FENCE = re.compile(r"^([ \t]*)```(\w*)\n(.*?)^\1```", re.M | re.S)
SPAN = re.compile(r"``(.+?)``|`([^`]+)`", re.S)
# What stands for a value the reader fills in: `<file>`, `<...>`, and a bare `...` for "and more".
PLACEHOLDER = re.compile(r"<[^<>\s]*>")
SECTIONS = set(JobConfig.model_fields)
CAMRAY_VERBS = ("run", "runs", "report", "query", "export", "migrate", "optimize")
# Flags of programs other than camray and Ray that the docs configure (the Pushgateway, Prometheus).
OTHER_PROGRAMS_FLAGS = {"--persistence.file": "prometheus-pushgateway", "--web.enable-lifecycle": "prometheus"}
# In the models' document, `model.` also starts the module paths of a timm model (`model.layer3`), which name no field.
MODULE_PATHS_NAMED = {"docs/models.md": "model"}


def _names(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(REPO)) for path in paths]


def _blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, the body dedented."""
    return [(language, textwrap.dedent(body)) for _, language, body in FENCE.findall(text)]


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def _spans(text: str) -> list[str]:
    """The inline code spans of the prose, whitespace runs (a span may wrap) made one space."""
    return [" ".join((double or single).split()) for double, single in SPAN.findall(_prose(text))]


def _shell_lines(text: str) -> list[str]:
    lines = []
    for language, body in _blocks(text):
        if language == "bash":
            lines += [line.strip() for line in body.replace("\\\n", " ").splitlines() if line.strip()]
    return lines


def _words(command: str) -> list[str]:
    """A command's words, placeholders stood in for: `<file>` by a value, a bare `...` (more of the same) left out,
    and the brackets of optional parts (`[--run RUN_ID]`) and alternatives (`csv|json`) dropped."""
    command = PLACEHOLDER.sub("VALUE", command)
    words = shlex.split(command, comments=True)
    return [word.strip("[]") for word in words if word.strip("[]") not in ("...", "")]


def _document(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but hyphens dropped, spaces made hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in _prose(path.read_text()).splitlines() if line.startswith("#")}


def _links(document: Path) -> list[str]:
    return [
        target
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(document.read_text()))
        if not target.startswith(("http://", "https://"))
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_links_lead_to_files_and_headings_that_exist(document):
    for target in _links(document):
        path, _, anchor = target.partition("#")
        linked = (document.parent / path) if path else document
        assert linked.exists(), f"{document.name} links to {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{document.name} links to {target}: no such heading"


def _repository_paths(document: Path) -> list[str]:
    return re.findall(r"`((?:camray|jobs|infra|docs|tests)/[\w./-]*)`", _prose(document.read_text()))


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_named_repository_paths_exist(document):
    missing = [path for path in _repository_paths(document) if not (REPO / path).exists()]
    assert not missing, f"{document.name} names paths that do not exist: {missing}"


def _python_names(document: Path) -> list[str]:
    return [span for span in _spans(document.read_text()) if re.fullmatch(r"camray(\.\w+)+", span)]


def _resolves(name: str) -> bool:
    """Whether `name` is a module of camray, or an attribute (a chain of them) of one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_named_python_objects_exist(document):
    """Dotted names of camray's modules, functions and constants; the Parquet metadata key camray writes
    (`camray.schema_version`) is a key of every file's metadata, not a module."""
    from camray.io.schema import _META

    metadata_keys = {key.decode() for key in _META}
    missing = [name for name in _python_names(document) if name not in metadata_keys and not _resolves(name)]
    assert not missing, f"{document.name} names what camray does not have: {missing}"


def _job_arguments(words: list[str]) -> list[str] | None:
    """The arguments of `camray run` or of `python jobs/cam_batch.py` (also after `ray job submit ... --`)."""
    if words[:2] == ["camray", "run"]:
        return words[2:]
    for start in range(len(words) - 1):
        if words[start : start + 2] == ["python", "jobs/cam_batch.py"]:
            return words[start + 2 :]
    return None


def _make_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_shell_commands_are_ones_the_code_accepts(document, monkeypatch):
    monkeypatch.chdir(REPO)  # config paths in the examples are relative to the repository
    for line in _shell_lines(document.read_text()):
        words = _words(line)
        arguments = _job_arguments(words)
        if arguments is not None:
            try:
                args = build_parser().parse_args(arguments)
            except SystemExit:
                pytest.fail(f"{document.name}: the job does not accept: {line}")
            if "VALUE" not in arguments:  # a command to run as written: its config must load
                load_config(args.config, overrides_from_args(args), args.preset)
        elif words[:1] == ["camray"]:
            try:
                build_camray_parser().parse_args(words[1:])
            except SystemExit:
                pytest.fail(f"{document.name}: camray does not accept: {line}")
        elif words[:1] == ["make"]:
            assert words[1] in _make_targets(), f"{document.name}: no make target {words[1]}"


def _verb_flags() -> dict[str, set[str]]:
    """The flags of each `camray` verb (`export` takes those of `export coco` and `export yolo`), and of `run`."""
    flags = {"run": set(build_parser()._option_string_actions)}
    verbs = build_camray_parser()._subparsers._group_actions[0].choices
    for verb in CAMRAY_VERBS[1:]:
        parser = verbs[verb]
        flags[verb] = set(parser._option_string_actions)
        if parser._subparsers is not None:
            for sub in parser._subparsers._group_actions[0].choices.values():
                flags[verb] |= set(sub._option_string_actions)
    return flags


def _tools_flags() -> set[str]:
    """The flags of camray's benchmarks and evaluation tools, from their parsers' `add_argument` calls."""
    flags = set()
    for path in [*(REPO / "camray" / "bench").glob("*.py"), *(REPO / "camray" / "evaluation").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                flags |= {
                    arg.value for arg in node.args if isinstance(arg, ast.Constant) and str(arg.value)[:2] == "--"
                }
    return flags


def _ray_flags() -> set[str]:
    """The options of every command of Ray's CLI (`ray start --head`, `ray job submit --working-dir`)."""
    import click
    from ray.scripts.scripts import cli

    flags: set[str] = set()
    commands = [cli]
    while commands:
        command = commands.pop()
        if isinstance(command, click.Group):
            commands += command.commands.values()
        flags |= {option for parameter in command.params for option in getattr(parameter, "opts", [])}
    return flags


def _inline_commands(document: Path) -> list[tuple[str, list[str]]]:
    """(verb, words) of each inline `camray VERB ...` or `python jobs/cam_batch.py ...` span."""
    commands = []
    for span in _spans(document.read_text()):
        words = _words(span) if not span.startswith("camray:") else []
        if words[:1] == ["camray"] and words[1:2] and words[1] in CAMRAY_VERBS:
            commands.append((words[1], words[2:]))
        elif words[:2] == ["python", "jobs/cam_batch.py"]:
            commands.append(("run", words[2:]))
    return commands


def _prose_flags(document: Path) -> list[str]:
    return re.findall(r"(?<![\w-])(--[a-z][\w.-]*[\w])", _prose(document.read_text()))


@pytest.fixture(scope="module")
def known_flags() -> tuple[dict[str, set[str]], set[str]]:
    verbs = _verb_flags()
    return verbs, set().union(*verbs.values(), _tools_flags(), _ray_flags(), OTHER_PROGRAMS_FLAGS)


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_flags_named_in_prose_are_ones_the_code_takes(document, known_flags):
    verbs, everyone = known_flags
    for verb, words in _inline_commands(document):
        unknown = [word for word in words if word.startswith("--") and word not in verbs[verb]]
        assert not unknown, f"{document.name}: `camray {verb}` takes no {unknown}"
    unknown = sorted({flag for flag in _prose_flags(document) if flag not in everyone})
    assert not unknown, f"{document.name} names flags nothing here takes: {unknown}"


def _field_names(document: Path) -> list[str]:
    """`section.field` of the config named in the prose: alone in a span, or as a `--section.field` flag."""
    names = []
    for span in _spans(document.read_text()):
        for word in span.split():
            match = re.fullmatch(r"(?:--)?([a-z_]+)\.([a-z_0-9]+)", word)
            if match and match.group(1) in SECTIONS:
                names.append(f"{match.group(1)}.{match.group(2)}")
    names += [flag[2:] for flag in _prose_flags(document) if "." in flag and flag[2:].split(".")[0] in SECTIONS]
    return names


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_config_fields_named_in_prose_exist(document):
    """A renamed field leaves the old name in the docs: it is only the generated configuration doc's to list, in its
    table of the old names still read."""
    fields = {
        f"{section}.{name}"
        for section, model in JobConfig.model_fields.items()
        for name in model.annotation.model_fields
    }
    module_paths = MODULE_PATHS_NAMED.get(_document(document))
    stale = [
        name
        for name in _field_names(document)
        if name not in fields
        and not (name in DEPRECATED_FIELDS and document.name == "configuration.md")
        and name.split(".")[0] != module_paths
    ]
    assert not stale, f"{document.name} names config fields that do not exist: {stale}"


def _named_make_targets(document: Path) -> list[str]:
    spans = [span.split()[1] for span in _spans(document.read_text()) if re.match(r"make [\w-]+", span)]
    return spans + [words[1] for words in map(_words, _shell_lines(document.read_text())) if words[:1] == ["make"]]


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_make_targets_named_exist(document):
    missing = sorted(set(_named_make_targets(document)) - _make_targets())
    assert not missing, f"{document.name} names make targets the Makefile lacks: {missing}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_every_document_holds_claims_that_are_checked(document):
    """A document with nothing these checks read would pass them whatever it said."""
    text = document.read_text()
    claims = [
        *_links(document),
        *_repository_paths(document),
        *_python_names(document),
        *_shell_lines(text),
        *_inline_commands(document),
        *_prose_flags(document),
        *_field_names(document),
        *_named_make_targets(document),
    ]
    assert claims, f"{document.name}: nothing in it is checked"


@pytest.mark.parametrize("document", DOCUMENTS, ids=_names(DOCUMENTS))
def test_yaml_examples_are_valid_job_configs(document, tmp_path):
    """A YAML block that names any of the job config's top-level keys is a job config, whole; others (a Prometheus
    config in the monitoring doc) are some other program's."""
    job_keys = {*JobConfig.model_fields, "preset"}
    for index, (language, body) in enumerate(_blocks(document.read_text())):
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


def test_make_test_fast_leaves_out_every_test_that_starts_ray_or_s3(request):
    """The README says `make test-fast` runs without the tests marked integration, those that start Ray or S3.
    tests/conftest.py refuses a collection holding a test that takes the S3 server or a Ray head unmarked; this
    session's tests passed it, and the Makefile's selection is the one it guards."""
    from server_fixtures import SERVER_FIXTURES, unmarked_server_tests

    recipe = re.search(r"^test-fast:.*\n\t(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert recipe and '-m "not integration"' in recipe.group(1), "the Makefile's test-fast selects otherwise"
    assert "make test-fast   # without the tests marked integration (those that start Ray or S3)" in README.read_text()
    assert unmarked_server_tests(request.session.items) == []
    shared = (REPO / "tests" / "conftest.py").read_text()
    assert all(f"\ndef {name}(" in shared for name in SERVER_FIXTURES)  # the fixtures it guards are the shared ones


def test_the_listed_version_is_what_the_docs_say_it_is(tmp_path):
    """The version incremental runs compare: `<size>-<last_modified_ns>` from a folder (and a LIST, an inventory:
    tests/io), as the configuration and the incremental doc say; no listing gives an ETag for it."""
    from camray.io.listing import iter_listing
    from camray.io.sources import S3Settings

    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"x" * 7)
    (chunk,) = iter_listing(str(tmp_path), [], True, S3Settings())
    assert chunk.column("version").to_pylist() == [f"7-{photo.stat().st_mtime_ns}"]
    described = JobConfig.model_fields["sink"].annotation.model_fields["incremental"].description
    generated = (REPO / "docs" / "configuration.md").read_text()
    for text in (described, generated, (REPO / "docs" / "incremental.md").read_text()):
        assert "`<size>-<last_modified_ns>`" in text and "S3 ETag or local size+mtime" not in text
