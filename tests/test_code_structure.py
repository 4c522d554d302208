"""Rules of the code's shape that keep it readable (docs/development.md): imports inside `utils/` run one way
only, from a higher layer to a lower one, and no function outside the tests runs over 50 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# utils/ packages from the lowest layer to the highest: a module may import its own layer and the ones before it.
LAYERS = ("utils.arguments", "utils.data", "utils.training", "utils.analysis", "utils.export", "utils.serving")
MAX_FUNCTION_LINES = 50


def source_files() -> list[Path]:
    """Every Python file of the project outside tests/ and virtual environments."""
    return sorted(path for path in ROOT.rglob("*.py")
                  if not {"tests", ".venv", "outputs", "wandb"} & set(path.relative_to(ROOT).parts))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file of module `name`, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            found.append((node.lineno, ".".join([*base, node.module or ""]).strip(".")))
    return found


def layer_of(module: str) -> int | None:
    return next((index for index, layer in enumerate(LAYERS) if module == layer or module.startswith(layer + ".")),
                None)


def test_utils_imports_run_from_higher_layers_to_lower_ones():
    backward = []
    for path in source_files():
        name = module_name(path)
        own = layer_of(name)
        for line, module in imported_modules(path, name):
            if name.startswith("models") and module.split(".")[0] in ("utils", "run_classification", "benchmarks"):
                backward.append(f"{path.relative_to(ROOT)}:{line} imports {module} (models/ knows nothing above it)")
            target = layer_of(module)
            if own is not None and target is not None and target > own:
                backward.append(f"{path.relative_to(ROOT)}:{line} ({LAYERS[own]}) imports {module} ({LAYERS[target]})")
    assert not backward, "Imports that run back up the layers " + " < ".join(LAYERS) + ":\n" + "\n".join(backward)


def test_the_layer_rule_sees_a_backward_import(tmp_path):
    """The check itself: an import from a higher layer is found, relative ones included."""
    probe = tmp_path / "probe.py"
    probe.write_text("from utils.training import trainer\nfrom ..analysis import sweep\nfrom . import digits\n")
    targets = [module for _, module in imported_modules(probe, "utils.data.probe")]
    assert targets == ["utils.training", "utils.analysis", "utils.data"]
    assert [layer_of(module) for module in targets] == [2, 3, 1]


def long_functions() -> list[str]:
    found = []
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_outside_the_tests_runs_over_fifty_lines():
    assert not long_functions(), "Split these into named steps:\n" + "\n".join(long_functions())


@pytest.mark.parametrize("package", LAYERS)
def test_every_layer_is_a_package_that_imports(package):
    __import__(package)
