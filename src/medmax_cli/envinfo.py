"""What `medmax env` reports: versions and the resolved model, ready to paste into a bug report."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(model: str | None = None) -> dict[str, Any]:
    """medmax, Python, platform, torch (+ CUDA, devices), transformers, peft, and the model that
    --model / $MEDMAX_MODEL / medmax.toml select (whether it is the random demo model)."""
    from medmax_cli import __version__
    from medmax_cli.model.load import model_is_random
    from medmax_cli.model.resolve import TINY_KEYWORD, model_choice, tiny_model_dir

    info: dict[str, Any] = {
        "medmax": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": _version("torch"),
        "cuda": None,
        "gpus": [],
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "tokenizers": _version("tokenizers"),
    }
    try:
        import torch

        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    value, source = model_choice(model)
    entry: dict[str, Any] = {"value": value, "source": source}
    if value is None:
        entry["note"] = "none chosen: commands that need a model exit 2 (--model DIR, or --model tiny)"
    else:
        path = tiny_model_dir() if value == TINY_KEYWORD else value
        entry["dir"] = str(path)
        entry["random"] = value == TINY_KEYWORD or model_is_random(path)
    info["model"] = entry
    return info


def format_environment(info: dict[str, Any]) -> str:
    model = info["model"]
    if model["value"] is None:
        shown = model["note"]
    else:
        shown = f"{model['dir']} (from {model['source']}{'; random weights' if model.get('random') else ''})"
    rows = [
        ("medmax", info["medmax"]),
        ("Python", info["python"]),
        ("Platform", info["platform"]),
        ("torch", info["torch"]),
        ("CUDA", f"{info['cuda'] or 'none (CPU build)'}; GPUs: {', '.join(info['gpus']) or 'none'}"),
        ("transformers", info["transformers"]),
        ("peft", info["peft"]),
        ("tokenizers", info["tokenizers"]),
        ("model", shown),
    ]
    return "".join(f"- {name}: {value}\n" for name, value in rows)
