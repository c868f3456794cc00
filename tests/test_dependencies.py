"""Dependencies say what runs (issue 25 item 6): every third-party module src/ imports is declared
(runtime, or the extra that needs it), and every declared runtime dependency is imported by src/."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "medmax_cli"

# import name -> distribution name, where they differ
DIST_OF = {"PIL": "pillow", "yaml": "pyyaml", "open_clip": "open_clip_torch"}
# a declared dependency used through another package's module
USED_VIA = {"tensorboard": "torch.utils.tensorboard"}


def imported_modules() -> set[str]:
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return names


def third_party(modules: set[str]) -> set[str]:
    tops = {m.split(".")[0] for m in modules}
    return {t for t in tops if t not in sys.stdlib_module_names and t not in ("medmax_cli", "__future__")}


def dist_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {dist_name(r) for r in project["dependencies"]}
    extras = {dist_name(r) for reqs in project.get("optional-dependencies", {}).values() for r in reqs}
    return runtime, extras


def test_every_import_is_declared():
    runtime, extras = declared()
    missing = sorted(
        m
        for m in third_party(imported_modules())
        if DIST_OF.get(m, m).lower().replace("_", "-") not in runtime | extras
    )
    assert not missing, f"imported by src/ but not declared in pyproject.toml: {missing}"


def test_every_runtime_dependency_is_used():
    runtime, _ = declared()
    modules = imported_modules()
    used = {DIST_OF.get(m, m).lower().replace("_", "-") for m in third_party(modules)}
    used |= {dist for dist, via in USED_VIA.items() if any(m.startswith(via) for m in modules)}
    unused = sorted(runtime - used)
    assert not unused, f"declared runtime dependencies src/ never imports (move them to an extra): {unused}"


def test_optional_trackers_are_extras():
    runtime, extras = declared()
    for tracker in ("wandb", "mlflow"):
        assert tracker in extras and tracker not in runtime
