"""The shared shape of every bench: both sides interleaved, medians with their spread, same output.

Why: a ratio measured once per side tracks the machine's load, not the code (issue 16: one ratio
went from 1.7x to 5.3x between runs). So each comparison runs naive, ours, naive, ours, ... (ABAB),
reports the median and min-max of each side and of the per-pair ratio, asserts that both sides
produced the same output, and writes everything, with the load average, core count, commit and
date, to `bench/results/<bench>.json` (`<bench>.quick.json` for --quick; `$BENCH_RESULTS` moves the
folder). Docs quote those files, never a figure typed by hand.

    bench = Bench("streams", quick=args.quick, settings={"records": n})
    bench.compare("read -> write", naive=lambda: naive(data), ours=lambda: ours(data),
                  repeats=3, work=n, unit="records")
    bench.finish()
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Measured:
    """Return this from a side to time only part of it (setup excluded): seconds and the output."""

    seconds: float
    output: Any


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            # the measured code only: docs or results edited during a run do not make it "dirty"
            [
                "git",
                "-C",
                str(ROOT),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "src",
                "bench",
                ":!bench/results",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + ("-dirty" if dirty else "")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt_rate(rate: float) -> str:
    if rate >= 100:
        return f"{rate:,.0f}"
    return f"{rate:.3g}"


class Bench:
    """One bench run: its comparisons, extra figures and the machine it ran on."""

    def __init__(self, name: str, *, quick: bool = False, settings: dict[str, Any] | None = None):
        self.name = name
        self.quick = quick
        self.settings = dict(settings or {})
        self.comparisons: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {}
        self.started = _dt.datetime.now(_dt.UTC)
        self.load_start = _load()
        self.t0 = time.perf_counter()

    def compare(
        self,
        label: str,
        *,
        naive: Callable[[], Any],
        ours: Callable[[], Any],
        repeats: int,
        work: float | Callable[[Any], float],
        unit: str,
        same: Callable[[Any, Any], bool] | None = None,
        names: tuple[str, str] = ("naive", "ours"),
        warmup: bool = False,
    ) -> dict[str, Any]:
        """Time `naive` and `ours` alternately `repeats` times each; assert equal outputs.

        `work` is how much each run does (records, tokens, ...), or a function of ours' output;
        the ratio is naive seconds / ours seconds per pair (so > 1 means ours is faster).
        """
        if warmup:
            naive()
            ours()
        times: list[list[float]] = [[], []]
        cpus: list[list[float]] = [[], []]
        outputs: list[Any] = [None, None]
        for _ in range(max(1, repeats)):
            for k, fn in enumerate((naive, ours)):
                start, cpu = time.perf_counter(), time.process_time()
                result = fn()
                elapsed = time.perf_counter() - start
                cpus[k].append(time.process_time() - cpu)
                if isinstance(result, Measured):
                    elapsed, result = result.seconds, result.output
                times[k].append(elapsed)
                outputs[k] = result
        equal = same(outputs[0], outputs[1]) if same is not None else outputs[0] == outputs[1]
        if not equal:
            raise AssertionError(f"{self.name}: {label}: {names[0]} and {names[1]} produced different output")
        amount = float(work(outputs[1]) if callable(work) else work)
        ratios = [a / b for a, b in zip(times[0], times[1], strict=True) if b > 0]
        cpu_ratios = [a / b for a, b in zip(cpus[0], cpus[1], strict=True) if b > 0]
        entry = {
            "label": label,
            "unit": unit,
            "work": amount,
            "repeats": len(times[0]),
            "same_output": True,
            "sides": {
                name: {
                    **_spread(t),
                    "rate_median": amount / statistics.median(t),
                    "seconds": t,
                    "process_cpu_seconds": c,  # this process, all its threads, setup included
                }
                for name, t, c in zip(names, times, cpus, strict=True)
            },
            "ratio": _spread(ratios),
            # CPU seconds of this process: the per-core view, steadier than wall time on a busy machine
            # (meaningless where a side works in other processes or on a GPU)
            "ratio_cpu": _spread(cpu_ratios) if cpu_ratios else None,
        }
        self.comparisons.append(entry)
        a, b = (entry["sides"][n] for n in names)
        r = entry["ratio"]
        print(f"  {label}: {fmt_rate(amount)} {unit}, {len(times[0])} ABAB pairs, median [min-max] seconds")
        for name, side in ((names[0], a), (names[1], b)):
            print(
                f"    {name:<14} {side['median']:8.3f} s [{side['min']:.3f}-{side['max']:.3f}]"
                f"  {fmt_rate(side['rate_median'])} {unit}/s"
            )
        rc = entry["ratio_cpu"]
        print(
            f"    ratio {names[0]}/{names[1]} time: {r['median']:.2f}x [{r['min']:.2f}-{r['max']:.2f}]"
            + (f"   CPU time: {rc['median']:.2f}x [{rc['min']:.2f}-{rc['max']:.2f}]" if rc else "")
        )
        sys.stdout.flush()
        return entry

    def figure(self, key: str, value: Any, text: str | None = None) -> None:
        """An extra figure for the results file (and a printed line when `text` is given)."""
        self.figures[key] = value
        if text:
            print(f"  {text}", flush=True)

    def results_path(self) -> Path:
        folder = Path(os.environ.get("BENCH_RESULTS") or ROOT / "bench" / "results")
        return folder / f"{self.name}{'.quick' if self.quick else ''}.json"

    def finish(self) -> Path:
        """Write the results file and print where it went, with the machine's load."""
        load_end = _load()
        doc = {
            "bench": self.name,
            "date": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "commit": _commit(),
            "cores": _cores(),
            "cpu_count": os.cpu_count(),
            "loadavg_start": self.load_start,
            "loadavg_end": load_end,
            "wall_seconds": round(time.perf_counter() - self.t0, 2),
            "python": platform.python_version(),
            "argv": sys.argv[1:],
            "quick": self.quick,
            "settings": self.settings,
            "comparisons": self.comparisons,
            "figures": self.figures,
        }
        path = self.results_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
        tmp.replace(path)
        load = "/".join(f"{x:g}" for x in (self.load_start[:1] + load_end[:1])) or "?"
        print(
            f"  [{doc['date']}, {doc['cores']} cores, load {load} (start/end), commit {doc['commit']}]"
            f" -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}",
            flush=True,
        )
        return path


def _stub(argv: list[str]) -> int:
    """`python bench/_harness.py --stub NAME [--fail NAME]`: bench/gpu.sh's dry-run step. It checks
    what a real step needs (the package and its wheels import, $BENCH_RESULTS is writable) and
    writes a results file like a bench; exits 3 when NAME is the one told to fail."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--stub", required=True)
    parser.add_argument("--fail", default="")
    args = parser.parse_args(argv)
    import orjson  # noqa: F401  (a carried wheel on the device; the env step imports the rest)

    import medmax_cli

    bench = Bench(f"stub-{args.stub}", quick=True, settings={"package": medmax_cli.__file__})
    print(f"dry-run step {args.stub}: medmax_cli from {medmax_cli.__file__}")
    bench.figure("python", platform.python_version())
    bench.finish()
    return 3 if args.stub == args.fail else 0


if __name__ == "__main__":
    sys.exit(_stub(sys.argv[1:]))
