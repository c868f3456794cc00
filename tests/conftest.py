"""Shared fixtures: a tiny model built once per session, a media store, the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault(
    "MEDMAX_MODEL", "tiny"
)  # commands need a model chosen (no silent random model); tests use the tiny one

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "sample"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """One tiny random Chameleon (real vocabulary layout) shared by every test in the session."""
    from medmax_cli.model.tiny import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_model(out, seed=0)
    return out


@pytest.fixture
def media(tmp_path):
    from medmax_cli.media import MediaStore

    return MediaStore(tmp_path / "media")


def run_medmax(
    *args: str,
    input: bytes | None = None,
    env: dict | None = None,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run the real `medmax` command in a subprocess (stdin bytes in, stdout/stderr bytes out)."""
    full_env = {**os.environ, **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "medmax_cli", *args],
        input=input,
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"medmax {' '.join(args)} exited {result.returncode}:\n{result.stderr.decode()}")
    return result


@pytest.fixture
def medmax():
    return run_medmax
