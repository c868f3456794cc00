"""Records through read -> write: medmax streams (orjson, validation) vs a plain `json` line loop.

python bench/streams.py [--records 200000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json

import orjson

from _harness import Bench
from medmax_cli.streams import ErrorPolicy, RecordWriter, read_records


def make_corpus(n: int) -> bytes:
    lines = []
    for i in range(n):
        record = {
            "id": f"PMC{i}-F1",
            "kind": "figure",
            "source": "pmc",
            "license": "cc-by",
            "credential": False,
            "caption": f"Axial CT of the abdomen showing a {i % 50} mm hypodense lesion in segment IV – µm scale.",
            "images": [{"sha256": f"{i:064x}", "path": f"ab/{i:064x}.png", "width": 512, "height": 384}],
            "mentions": [
                {
                    "section": "Results",
                    "sentence": "As shown in Figure 1, the lesion ...",
                    "start": 9,
                    "end": 17,
                }
            ],
            "meta": {"year": 2020 + i % 5},
        }
        lines.append(orjson.dumps(record))
    return b"\n".join(lines) + b"\n"


def naive(data: bytes) -> bytes:
    out = io.StringIO()
    n = 0
    for line in io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"):
        record = json.loads(line)
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        n += 1
    assert n
    return out.getvalue().encode()


def ours(data: bytes) -> bytes:
    out = io.BytesIO()
    writer = RecordWriter(out, flush_each=False)
    n = 0
    for record in read_records(io.BytesIO(data), policy=ErrorPolicy()):
        writer.write(record)
        n += 1
    writer.close()
    assert n
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20k records, 1 repeat")
    args = parser.parse_args()
    n, repeats = (20_000, 1) if args.quick else (args.records, args.repeats)
    data = make_corpus(n)
    bench = Bench("streams", quick=args.quick, settings={"records": n})
    print(f"streams: {n} records read -> write (naive json line loop vs medmax streams, validated)")
    # same output: the same records, line by line (orjson is compact, json.dumps adds spaces)
    bench.compare(
        "read -> write",
        naive=lambda: naive(data),
        ours=lambda: ours(data),
        repeats=repeats,
        work=n,
        unit="records",
        same=lambda a, b: list(map(orjson.loads, a.splitlines())) == list(map(orjson.loads, b.splitlines())),
    )
    bench.finish()


if __name__ == "__main__":
    main()
