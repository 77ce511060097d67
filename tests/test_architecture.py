"""The folder tree is the architecture: a parse of every import in library/ checks that the layers hold.

Plumbing (config, runtime, cluster, tracking, model_store, plots, cli) and the shared data/ and models/ never import
a domain folder (train/, search/, pretrained/, adversarial/); nothing imports in a cycle; the reports that rebuild a sweep or a
study from MLflow alone, and the notebooks that call them, load no Ray; no module outgrows 300 lines.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

LIBRARY = REPO / "library"
DOMAINS = ("train", "search", "pretrained", "adversarial", "campaign")
PLUMBING = ("config", "runtime", "cluster", "worker_start", "tracking", "model_store", "plots", "stats", "data",
            "models")
MLFLOW_ONLY = ("library.search.sweep_report", "library.search.study_report", "library.campaign.report",
               "library.campaign.runner")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(LIBRARY.rglob("*.py"))}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """The library modules an import names: `from .x import y` is library...x.y when that is a module, else x."""
    if node.level == 0:
        base = node.module or ""
    else:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([node.module] if node.module else []))
    named = [f"{base}.{alias.name}" for alias in node.names]
    found = [n for n in named if n in MODULES]
    return found or [base]


def imports(module: str, top_level_only: bool = False) -> set[str]:
    """Every module `module` imports (library modules by full name, others by their top-level package)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            out |= set(_resolve(module, path, node))
    return {name if name.startswith("library") else name.split(".")[0] for name in out}


def folder(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_plumbing_and_the_shared_folders_import_no_domain_folder():
    offences = [f"{m} imports {t}" for m in MODULES if folder(m) in PLUMBING
                for t in imports(m) if t.startswith("library.") and folder(t) in DOMAINS]
    assert not offences, offences


def test_the_worker_start_hook_imports_nothing_that_it_would_load_with_the_collector_on():
    """Ray runs it in a worker before the worker loads torch; anything it imported would load collecting."""
    assert imports("library.worker_start") == {"gc"}


ACROSS_DOMAINS = {"train": {"adversarial"}, "search": {"train"}, "pretrained": set(), "adversarial": set(),
                  "campaign": set()}  # a campaign runs the other domains' jobs as processes, reads MLflow


def test_domains_import_across_only_as_the_package_docstring_says():
    offences = [f"{m} imports {t}" for m in MODULES if folder(m) in DOMAINS for t in imports(m)
                if t.startswith("library.") and folder(t) in DOMAINS and folder(t) != folder(m)
                and folder(t) not in ACROSS_DOMAINS[folder(m)]]
    assert not offences, offences


def test_nothing_imports_in_a_cycle():
    graph = {m: {t for t in imports(m) if t in MODULES and t != m} for m in MODULES}
    # a package's __init__ re-exporting its own modules is not a cycle of theirs
    graph = {m: {t for t in ts if not (m.startswith(t + ".") and MODULES[t].name == "__init__.py")}
             for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                cycle.extend(stack[stack.index(t):] + [t] if t in stack else [m, t])
                return True
            if t not in state and visit(t, stack + [t]):
                return True
        state[m] = 2
        return False

    assert not any(visit(m, [m]) for m in graph if m not in state), " -> ".join(cycle)


def test_the_reports_and_notebooks_load_no_ray():
    """Statically (no module they load at import time imports Ray) and for real, in a fresh interpreter."""
    seen, todo = set(), list(MLFLOW_ONLY)
    while todo:
        m = todo.pop()
        seen.add(m)
        loaded = imports(m, top_level_only=m not in MLFLOW_ONLY)  # the reports' own lazy imports count too
        assert "ray" not in loaded, f"{m} imports ray (reached from {MLFLOW_ONLY})"
        todo += [t for t in loaded if t in MODULES and t not in seen]
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
        source = "\n".join("".join(c["source"]) for c in cells)
        tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))
        named = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        named |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(name.split(".")[0] == "ray" for name in named), notebook.name
    code = f"import sys; import {', '.join(MLFLOW_ONLY)}; assert 'ray' not in sys.modules, 'ray was imported'"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_a_trial_process_imports_neither_mlflow_nor_timm():
    """Unpickling the trainable is every fresh trial process's first work: MLflow and timm would add ~2.5 s of
    imports to it (the driver logs to MLflow; timm models import timm when built)."""
    code = ("import sys, pickle; from library.search.trainable import trainable; pickle.loads(pickle.dumps(trainable)); "
            "heavy = {'mlflow', 'timm', 'torchvision'} & set(sys.modules); assert not heavy, heavy")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_300_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 300, f"{module} has {lines} lines: split it by what its parts do"


@pytest.mark.parametrize("job", sorted(p.name for p in (REPO / "jobs").glob("*.py")))
def test_every_job_pauses_the_collector_before_its_imports(job):
    """run_job turns collection back on with what the imports built frozen (library/runtime.py); a job that skips
    the pause pays ~1 s of collections while torch and MLflow load."""
    body = ast.parse((REPO / "jobs" / job).read_text()).body
    pause = next(i for i, node in enumerate(body) if isinstance(node, ast.If) and "gc.disable()" in ast.unparse(node)
                 and ast.unparse(node.test) == "__name__ == '__main__'")
    first_import = next(i for i, node in enumerate(body) if isinstance(node, (ast.Import, ast.ImportFrom))
                        and (node.names[0].name if isinstance(node, ast.Import) else node.module or "").split(".")[0]
                        not in sys.stdlib_module_names | {"__future__"})
    assert pause < first_import
