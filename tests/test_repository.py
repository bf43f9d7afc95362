"""The repository holds the product: nothing a run writes is tracked, no file but the shipped
weights is large, and docs/configuration.md is what the configuration types say."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Where runs write by default: training out_dir, Ray Tune's results, MLflow's stores, exports.
RUN_OUTPUTS = ("runs/train/last.pt", "runs/x/model.safetensors", "ray_results/x/search.yaml", "mlflow.db",
               "mlruns/0/meta.yaml", "best.yaml", "best-2.yaml", "results/x.json", "model.safetensors")


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


needs_git = pytest.mark.skipif(_git("rev-parse", "--git-dir").returncode != 0, reason="not a git checkout")


@needs_git
def test_nothing_a_run_writes_is_tracked_and_git_ignores_all_of_it():
    tracked = _git("ls-files", "runs", "results", "ray_results", "mlruns", "mlflow.db").stdout.split()
    assert tracked == [], f"tracked files where runs write: {tracked[:5]}"
    ignored = _git("check-ignore", "--no-index", *RUN_OUTPUTS).stdout.split()
    assert sorted(ignored) == sorted(RUN_OUTPUTS)
    # The shipped weights stay tracked.
    assert _git("check-ignore", "--no-index", "smoothblock/weights/resnet20-cifar10.safetensors").returncode == 1


@needs_git
def test_no_tracked_file_is_over_2_mb_but_the_shipped_weights():
    # checkpoints/: a long job's one checkpoint, committed at most once a session (docs/reliability.md).
    big = [name for name in _git("ls-files").stdout.splitlines()
           if (ROOT / name).is_file() and (ROOT / name).stat().st_size > 2_000_000
           and not name.startswith(("smoothblock/weights/", "checkpoints/"))]
    assert big == []


def test_the_configuration_reference_is_generated_from_the_types():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "configuration_docs.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_ci_runs_exactly_the_test_command_of_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [block.split("\n", 1)[1].strip() for block in readme.split("```bash")[1:]]
    test_command = next(c.split("```")[0].strip() for c in commands if c.split("```")[0].strip().endswith("pytest"))
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci


@pytest.mark.parametrize("path", sorted([*(ROOT / "examples").glob("*.yaml"),
                                          *(ROOT / "smoothblock" / "weights").glob("*.yaml")]), ids=lambda p: p.name)
def test_every_example_is_a_valid_configuration(path):
    from search.config import compose
    from smoothblock import Config

    text = path.read_text(encoding="utf-8")
    if "space:" in text:
        assert compose("posthoc", str(path)).trials >= 1
    else:
        assert Config.load(path).out_dir.startswith("runs/")


def _imports(package: str) -> dict[str, set[str]]:
    """Every module of ``package`` -> the top-level names it imports (also inside functions)."""
    import ast

    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


#: What each package may not import: the library nothing of the application, the trainables
#: nothing of the search, the thesis reproduction nothing of the search.
FORBIDDEN = {
    "smoothblock": {"argparse", "matplotlib", "torchcam", "ray", "optuna", "mlflow", "trainables", "search",
                    "reproduction"},
    "trainables": {"search", "reproduction", "argparse", "optuna", "mlflow"},
    "reproduction": {"search", "trainables", "argparse", "ray", "optuna", "mlflow"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way_and_the_library_holds_no_application(package):
    wrong = {module: sorted(names & FORBIDDEN[package]) for module, names in _imports(package).items()
             if names & FORBIDDEN[package]}
    assert not wrong, f"{package} imports what it must not: {wrong}"


def test_the_attacks_package_has_no_import_circle():
    import ast

    package = ROOT / "smoothblock" / "attacks"
    edges = {}
    for path in package.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module} if node.module else {alias.name for alias in node.names}
        edges[path.stem] = deps - {"__init__"}
    # A module may import a sibling only if that sibling (transitively) never imports it back.
    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in edges.get(start, ()))
    circles = sorted(m for m in edges if m != "__init__" and reaches(m, m))
    assert not circles, f"import circles through {circles}"


@pytest.mark.parametrize("package", ["smoothblock", "trainables", "search", "reproduction"])
def test_no_file_is_over_400_lines_and_no_function_over_60_lines(package):
    import ast

    long = []
    for path in sorted((ROOT / package).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > 400:
            long.append(f"{path.relative_to(ROOT)} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # from the signature to the end, docstring included
                if lines > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({lines} lines)")
    assert not long, "split these: " + "; ".join(long)


def test_every_test_the_reliability_table_names_exists():
    """docs/reliability.md's fault table names, per row, the test that makes the fault happen."""
    import re

    text = (ROOT / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`(?:tests/\w+\.py::)?(test_\w+)`", text))
    defined = {m for path in (ROOT / "tests").glob("test_*.py")
               for m in re.findall(r"^def (test_\w+)\(", path.read_text(), re.MULTILINE)}
    assert len(named) >= 8 and named <= defined, named - defined
