"""The tree's rules, checked by reading every module's imports with `ast` (nothing is imported to check).

- No import cycles between `camray` modules (imports at module level, which run at import time).
- Pure compute (`camray.cam`, `camray.image.decode`) loads nothing of Ray, S3 or `camray.io`, not even
  through another module: what it imports at module level, and what those import in turn, is followed.
- `camray.io` imports nothing from `camray.models` or `camray.cam`, anywhere in its code.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "camray"

PURE = ("camray.cam", "camray.image.decode")
FORBIDDEN_IN_PURE = ("ray", "boto3", "botocore", "s3fs", "pyarrow.fs", "camray.io")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    # `from pkg import name` may name a submodule; both candidates are resolved against the real tree below.
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def _imports(path: Path, module: str, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(nodes: list[ast.stmt], top: bool) -> None:
        for node in nodes:
            if _is_type_checking_block(node):
                continue
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.update(_imported_names(node, module, is_package))
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if not top_level_only or isinstance(node, ast.ClassDef):
                    visit(node.body, top)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, None)
                    if children:
                        visit([c for c in children if isinstance(c, ast.stmt | ast.ExceptHandler)], top)
                if isinstance(node, ast.ExceptHandler):
                    visit(node.body, top)

    visit(tree.body, True)
    return found


def _internal_targets(names: set[str], modules: dict[str, Path]) -> set[str]:
    """Pipeline modules an import statement loads: the named module and every package above it."""
    targets = set()
    for name in names:
        if not name.startswith("camray"):
            continue
        parts = name.split(".")
        for end in range(1, len(parts) + 1):
            candidate = ".".join(parts[:end])
            if candidate in modules:
                targets.add(candidate)
    return targets


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts))}


def _graph(top_level_only: bool) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules()
    raw = {name: _imports(path, name, top_level_only) for name, path in modules.items()}
    # A module's own parent packages are initialised before it, whatever it imports: not an edge.
    internal = {name: _internal_targets(names, modules) - {name, *_ancestors(name)} for name, names in raw.items()}
    return raw, internal


def test_the_walker_sees_every_module_and_known_imports():
    raw, internal = _graph(top_level_only=True)
    assert {"camray.runner", "camray.predictor", "camray.cam.maps", "camray.io.sink"} <= raw.keys()
    assert "ray" in {name.split(".")[0] for name in raw["camray.io.sink"]}
    assert {"camray.io.schema", "camray.io.sources"} <= internal["camray.io.sink"]


def test_no_import_cycles():
    _, internal = _graph(top_level_only=True)
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(internal[node]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                walk(target)
        stack.pop()
        state[node] = 2

    for module in sorted(internal):
        if module not in state:
            walk(module)


def _loaded_by(module: str, raw: dict[str, set[str]], internal: dict[str, set[str]]) -> set[str]:
    """Every name imported at module level by `module` and, transitively, by the pipeline modules it loads."""
    seen, todo, names = set(), [module], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        names |= raw[current] | {current}
        todo.extend(internal[current])
    return names


def test_pure_compute_loads_nothing_of_ray_s3_or_io():
    raw, internal = _graph(top_level_only=True)
    pure = [name for name in raw if any(name == p or name.startswith(p + ".") for p in PURE)]
    assert "camray.cam.maps" in pure and "camray.image.decode" in pure
    for module in pure:
        loaded = _loaded_by(module, raw, internal)
        bad = sorted(name for name in loaded if any(name == f or name.startswith(f + ".") for f in FORBIDDEN_IN_PURE))
        assert not bad, f"{module} loads {bad}"


def test_io_knows_nothing_of_models_or_cam():
    raw, _ = _graph(top_level_only=False)
    for module, names in raw.items():
        if module == "camray.io" or module.startswith("camray.io."):
            bad = sorted(n for n in names if n.startswith(("camray.models", "camray.cam")))
            assert not bad, f"{module} imports {bad}"
