"""`make install` without a GPU pins the CPU-only torch (`+cpu` local version) that PyPI's CUDA
build cannot satisfy; with a GPU it keeps the CUDA build (issue 25 item 1). A static check of the
Makefile's recipe, plus PEP 440's rule that makes the pin work."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def install_recipe() -> str:
    text = (REPO / "Makefile").read_text()
    return text[text.index("$(STAMP): pyproject.toml") :].split("\n\n")[0]


def test_cpu_branch_pins_the_cpu_local_version():
    recipe = install_recipe()
    gpu, cpu = recipe.split("else", 1)
    assert "nvidia-smi" in gpu and '"torch>=2.4"' in gpu  # with a GPU: the CUDA build
    pins = re.findall(r'"torch==([^"]+)"', cpu)
    assert pins and all(p == "$(TORCH_VERSION)+cpu" for p in pins), pins  # every CPU try is +cpu
    assert "$(TORCH_CPU_INDEX)" in cpu and "download.pytorch.org/whl/cpu" in (REPO / "Makefile").read_text()
    # torch goes in before the package, whose `torch>=2.4` the installed CPU build satisfies
    assert recipe.index("torch==") < recipe.index('install --quiet -e ".[test]"')


def test_pypi_cuda_build_cannot_satisfy_the_pin():
    from packaging.specifiers import SpecifierSet

    pin = SpecifierSet("==2.13.0+cpu")
    assert "2.13.0+cpu" in pin
    assert "2.13.0" not in pin  # PyPI's wheel (the CUDA build) has no local label
    assert "2.13.0+cu126" not in pin
