"""bench/gpu.sh works the first time on a lent GPU machine (issue 16): its plumbing, dry-run on the
CPU, and the wheels it carries (CPython 3.12 tags, every dependency the device lacks)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.sh"
WHEELS = ROOT / "gpu-wheels"
# The device image's Python packages (/work/.library/device/KINDS.md, "Python packages already
# there", read 2026-11-17), lower-case with '-' for '_': what need not be carried.
DEVICE = set(
    """accelerate click filelock fsspec h11 httpcore httpx huggingface-hub idna jinja2 lxml markdown matplotlib
    numpy packaging peft pillow protobuf pyarrow pytest pytest-timeout pyyaml regex requests rich safetensors
    setuptools shellingham tensorboard timm tokenizers torch torchvision tqdm transformers typer
    typing-extensions urllib3""".split()
)
# The versions of those known (KINDS.md's "pip list, as a session saw it" row, 2026-11): a versioned
# requirement on a device package is met only where its version is known and satisfies it; one of
# unknown version (timm) is carried in a version that does.
DEVICE_VERSIONS = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "torchvision": "0.26.0",
    "transformers": "5.17.0",
}
# open_clip_torch 3.3.0's METADATA, its Requires-Dist lines without an extra (read from the wheel
# `pip download open_clip_torch==3.3.0 --no-deps` fetches): what the carried wheels must meet when
# gpu-wheels/ is not here to read.
OPEN_CLIP_REQUIRES = [
    "torch>=2.0",
    "torchvision",
    "regex",
    "ftfy",
    "tqdm",
    "huggingface-hub",
    "safetensors",
    "timm>=1.0.17",
]


# The device's interpreter, for a requirement's environment marker: CPython 3.12.3 on Linux x86-64.
DEVICE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    """bench/gpu-wheels.sh's `name==version` pins."""
    text = (ROOT / "bench" / "gpu-wheels.sh").read_text()
    return {norm(n): v for n, v in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.]*)", text)}


def unmet(requirement: str, carried: dict[str, str]) -> str | None:
    """Why a requirement would not hold on the device with the carried wheels, or None."""
    parsed = Requirement(requirement)
    if parsed.marker is not None and not parsed.marker.evaluate(DEVICE_MARKERS):
        return None  # not for the device's Python (e.g. wcwidth's backport for Python < 3.2)
    dep = norm(parsed.name)
    version = carried.get(dep) or DEVICE_VERSIONS.get(dep)
    if version is None:
        if dep not in DEVICE:
            return f"{dep}: neither on the device nor carried"
        if parsed.specifier:
            return f"{dep}{parsed.specifier}: on the device in an unknown version; carry it"
        return None
    if parsed.specifier and not parsed.specifier.contains(version, prereleases=True):
        return f"{dep}{parsed.specifier}: {version} there"
    return None


def test_dry_run_plumbing(tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "GPU_DRY_RUN": "1",
        "GPU_DRY_FAIL": "vision",
        "PYTHON": sys.executable,
    }
    env.pop("BENCH_RESULTS", None)
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = (out / "summary.txt").read_text()
    steps = re.findall(r"^== (\S+) \(limit (\d+)s\)", summary, re.M)
    assert [name for name, _ in steps] == ["train", "gpu-tests", "vision", "generate"]  # training first
    status = {name: rc for rc, name in re.findall(r"^rc=(\d+) \((\S+),", summary, re.M)}
    assert status == {
        "train": "0",
        "gpu-tests": "0",
        "vision": "3",
        "generate": "0",
    }  # a failure does not stop it
    envlog = (out / "env.log").read_text()
    total = int(re.search(r"step limits total (\d+)s", envlog).group(1))
    assert total < 540  # one device command may run 600 s; the rest is the start and transfers
    assert "imports ok" in envlog and "env check rc=0" in envlog
    for name, _ in steps:  # each step wrote its log and (the stub) its results file as it went
        assert (out / f"{name}.log").read_text().startswith(f"dry-run step {name}")
        doc = json.loads((out / f"stub-{name}.quick.json").read_text())
        assert doc["cores"] >= 1 and doc["commit"] and doc["loadavg_start"] is not None
    assert not (ROOT / "bench" / "results" / "stub-train.quick.json").exists()  # $BENCH_RESULTS was used


def test_every_step_names_a_script_that_exists_and_the_flags_it_takes():
    text = SCRIPT.read_text()
    assert "PYTHONUNBUFFERED=1" in text
    for script, flags in re.findall(r'^  "\S+ \d+ \$PY (bench/\S+\.py)([^"]*)"', text, re.M):
        source = (ROOT / script).read_text()
        for flag in re.findall(r"--[a-z-]+", flags):
            assert f'"{flag}"' in source, (script, flag)


def test_the_wheel_script_covers_what_the_device_lacks():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = {norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in deps} - DEVICE
    pinned = {
        norm(n)
        for n in re.findall(r"([A-Za-z0-9_.-]+)==[0-9]", (ROOT / "bench" / "gpu-wheels.sh").read_text())
    }
    assert needed <= pinned, needed - pinned


@pytest.mark.skipif(not WHEELS.is_dir(), reason="no gpu-wheels/ here (make gpu-wheels downloads them)")
def test_carried_wheels_install_on_cpython_312():
    wheels = sorted(WHEELS.glob("*.whl"))
    assert wheels
    carried: dict[str, str] = {}
    for wheel in wheels:
        parts = wheel.name[: -len(".whl")].split("-")
        name, python, abi, platform = parts[0], parts[-3], parts[-2], parts[-1]
        carried[norm(name)] = parts[1]
        assert {"cp312", "py3"} & set(python.split(".")), wheel.name  # cp312, py3, py2.py3
        assert abi in ("cp312", "abi3", "none"), wheel.name
        assert platform == "any" or "x86_64" in platform, wheel.name
    assert len(carried) == len(wheels), "two versions of one package stop the whole install"
    assert carried == {n: v for n, v in pins().items() if n in carried}  # the versions the script pins
    for wheel in wheels:  # what each wheel needs is on the device or carried too, in a version it takes
        with zipfile.ZipFile(wheel) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            requires = [
                line.split(":", 1)[1].strip()
                for line in z.read(meta).decode().splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line
            ]
        for req in requires:
            assert unmet(req, carried) is None, (wheel.name, unmet(req, carried))


def test_the_open_clip_test_runs_in_the_gpu_step():
    """The open_clip similarity test is skipped on the CPU machines (no PyPI CPU torchvision for our
    CPU torch) and marked `gpu`, so gpu.sh's `-m gpu` step runs it where the carried wheels give it
    open_clip: the wheel script carries open_clip_torch and its dependencies the device lacks, and
    never a torchvision (the image's 0.26 is torch 2.11's; a carried one would shadow it)."""
    import ast
    import tomllib

    source = (ROOT / "tests" / "test_score_similarity.py").read_text()
    test = next(
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef) and node.name == "test_open_clip_tiny_random_model"
    )
    marks = {ast.unparse(d) for d in test.decorator_list}
    assert "pytest.mark.gpu" in marks
    assert re.search(r'"gpu-tests \d+ \$PY -m pytest[^"]* -m gpu tests', SCRIPT.read_text())
    pinned = pins()
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["clip"]
    clip = {norm(re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0]) for d in extra}
    assert clip <= pinned.keys() and {"ftfy", "wcwidth"} <= pinned.keys()
    assert "torchvision" not in pinned and "torch" not in pinned
    # open_clip_torch 3.3.0 needs timm>=1.0.17, and the image's timm is of unknown version: carried
    assert pinned["open-clip-torch"] == "3.3.0"
    assert [unmet(r, pinned) for r in OPEN_CLIP_REQUIRES] == [None] * len(OPEN_CLIP_REQUIRES)
    assert unmet("timm>=1.0.17", {}) is not None  # without the pin it would not hold
