"""Peak memory against corpus size: `medmax pack` and `medmax synthesize --ratio` at two sizes 10x apart.

Issue 16's target: at 10x the input, the peak RSS stays within 1.5x the smaller run's + 150 MB
(what a bounded cache and a streamed mix allow; anything that holds every instance or every text
grows ~10x). Each run is the real command in its own process; its peak RSS comes from `wait4`.

- pack: distinct text-only instances, multi-paragraph (newlines, so the tokenizer's per-text path,
  the one whose cache used to grow ~12 KB a text), single- and double-spaced sentences, unicode.
- synthesize --ratio captioning=2,vqa=1: figure, qa and report source records (bench/synthesize.py's),
  every instance passing through the mix.

    python bench/memory.py            # pack 2,000 vs 20,000 instances; synthesize 3,000 vs 30,000 records
    python bench/memory.py --quick    # 10x smaller
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from _harness import ROOT, Bench

SENTENCES = [
    "Axial contrast-enhanced CT shows a 3.2 cm hypodense lesion in segment IV of the liver",
    "The lesion measures 12 × 9 mm with peripheral enhancement (arrow)",
    "H&E staining, original magnification ×200: cribriform glands with nuclear atypia",
    "No evidence of pleural effusion or consolidation; the cardiomediastinal silhouette is normal",
    "T2-weighted MRI: hyperintense signal at 5° inclination, Größe unverändert",
    "β-catenin immunostaining is positive in ≥30% of tumour cells (µm scale bar)",
    "Follow-up at 6 months showed partial regression of the mass",
    "肝 segment VIII: a small cyst without septations",
]


def text(rng: np.random.Generator, i: int, salt: str) -> str:
    picks = rng.integers(0, len(SENTENCES), int(rng.integers(3, 12)))
    body = [f"{SENTENCES[k]} (case {i}{salt}, {int(rng.integers(1, 999))})." for k in picks]
    style = i % 3
    if style == 0:
        return "\n\n".join(body)  # paragraphs
    if style == 1:
        return "\n".join(body)  # line breaks
    return "  ".join(body)  # two spaces after a full stop


def pack_input(path: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    with open(path, "wb") as out:
        for i in range(n):
            record = {
                "id": f"m{i:07d}",
                "task": "visual_chat",
                "domain": "radiology",
                "source": "bench",
                "license": "cc-by",
                "credential": False,
                "images": [],
                "turns": [
                    {"role": "user", "content": [{"text": text(rng, i, "q")}]},
                    {"role": "assistant", "content": [{"text": text(rng, i, "a")}]},
                ],
                "meta": {},
            }
            out.write(orjson.dumps(record) + b"\n")


def synthesize_input(path: Path, n: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from synthesize import make_records  # bench/synthesize.py's source records

    records, _ = make_records(n)
    with open(path, "wb") as out:
        for record in records:
            out.write(orjson.dumps(record) + b"\n")


def peak_rss(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS in MB of the command and the children it waited for, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start  # Linux: ru_maxrss in KB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller sizes")
    parser.add_argument("--pack-n", type=int, default=None, help="pack: instances of the smaller run")
    parser.add_argument("--synth-n", type=int, default=None, help="synthesize: records of the smaller run")
    parser.add_argument(
        "--src", default=str(ROOT / "src"), help="the package to measure (e.g. another checkout's)"
    )
    args = parser.parse_args()
    pack_n = args.pack_n or (200 if args.quick else 2000)
    synth_n = args.synth_n or (300 if args.quick else 3000)
    env = {**os.environ, "PYTHONPATH": args.src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    medmax = [sys.executable, "-m", "medmax_cli"]
    bench = Bench(
        "memory", quick=args.quick, settings={"pack_n": pack_n, "synth_n": synth_n, "src": args.src}
    )
    print("peak RSS at two input sizes 10x apart (target: big <= 1.5 x small + 150 MB)")
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp)
        from medmax_cli.model.resolve import ensure_tiny_model

        model = str(ensure_tiny_model(notify=lambda m: print(m, file=sys.stderr)))
        for stage, n, make, cmd in (
            (
                "pack",
                pack_n,
                pack_input,
                lambda i, o: [*medmax, "pack", str(i), "-o", str(o), "--model", model, "-q"],
            ),
            (
                "synthesize --ratio",
                synth_n,
                synthesize_input,
                lambda i, o: [
                    *medmax,
                    "synthesize",
                    str(i),
                    "-o",
                    str(o),
                    "--ratio",
                    "captioning=2,vqa=1",
                    "-q",
                ],
            ),
        ):
            peaks = {}
            for size in (n, 10 * n):
                data = root / f"{stage.split()[0]}-{size}.jsonl"
                make(data, size)
                out = root / f"out-{stage.split()[0]}-{size}"
                peaks[size] = peak_rss(cmd(data, out), env)
                print(
                    f"  {stage:<19} {size:>7} inputs ({data.stat().st_size / 1e6:6.1f} MB): peak RSS "
                    f"{peaks[size][0]:7.1f} MB ({peaks[size][1]:.1f} s)",
                    flush=True,
                )
                data.unlink()
            small, big = peaks[n][0], peaks[10 * n][0]
            limit = 1.5 * small + 150
            holds = big <= limit
            ok &= holds
            bench.figure(
                stage,
                {"sizes": [n, 10 * n], "peak_rss_mb": [small, big], "limit_mb": limit, "holds": holds},
                f"{stage}: {big:.0f} MB at 10x vs limit {limit:.0f} MB (1.5 x {small:.0f} + 150): "
                + ("holds" if holds else "EXCEEDED"),
            )
    bench.finish()
    if not ok:
        raise SystemExit("memory target exceeded")


if __name__ == "__main__":
    main()
