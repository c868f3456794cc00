"""The real `medmax score` command: stdout lines, summary bytes, report, compare, errors."""

from __future__ import annotations

import hashlib

import orjson

from medmax_cli.streams import parse_jsonl
from score_helpers import vqa

OPTIONS = ["CT", "MRI", "X-ray", "PET"]


def _predictions(flip: bool = False) -> list[dict]:
    out = []
    for i in range(12):
        gold = "yes" if i % 2 else "no"
        answer = gold if (i % 3 or flip) else ("no" if gold == "yes" else "yes")
        out.append(vqa(f"rad-{i}", "vqa_rad_closed", gold, answer, image=f"img/{i // 2}.png"))
    for i in range(8):
        out.append(vqa(f"pmc-{i}", "pmc_vqa", "B", "B" if i % 2 or flip else "(B)", options=OPTIONS))
    return out


def _jsonl(records) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def test_score_lines_summary_bytes_and_report(tmp_path, medmax):
    data = _jsonl(_predictions())
    first = medmax(
        "score", "--summary", str(tmp_path / "a.json"), "--report", str(tmp_path / "rep"), input=data
    )
    medmax("score", "--summary", str(tmp_path / "b.json"), "--cluster-by-image", input=data)
    medmax("score", "--summary", str(tmp_path / "c.json"), input=data)
    lines = parse_jsonl(first.stdout)
    assert len(lines) == 20 and {x["status"] for x in lines} == {"scored"}
    summary = orjson.loads((tmp_path / "a.json").read_bytes())
    assert summary["tasks"]["vqa_rad_closed"]["mean"] == round(8 / 12, 6)
    assert summary["tasks"]["pmc_vqa"]["mean"] == 0.5  # "(B)" is wrong under MedMax's rule
    assert summary["provenance"]["rules_version"] == "medmax@2"
    assert summary["provenance"]["input_records"] == 20
    # the input named as `sha256sum` names it: the digest of the bytes read
    assert summary["provenance"]["input_sha256"] == hashlib.sha256(data).hexdigest()
    # same input and seed: byte-identical summary; clustering changes the CIs, not the means
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "c.json").read_bytes()
    clustered = orjson.loads((tmp_path / "b.json").read_bytes())
    assert clustered["tasks"]["vqa_rad_closed"]["mean"] == summary["tasks"]["vqa_rad_closed"]["mean"]
    assert clustered["tasks"]["vqa_rad_closed"]["ci95"] != summary["tasks"]["vqa_rad_closed"]["ci95"]
    assert b"| VQA-RAD closed | accuracy | 12 | 12 | 100.0% | 66.7 |" in first.stderr
    assert b"VQA average" in first.stderr
    png = (tmp_path / "rep" / "scores.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "rep" / "summary.json").read_bytes() == (tmp_path / "a.json").read_bytes()
    assert (tmp_path / "rep" / "table.md").read_text().startswith("| task |")


def test_robust_rules_and_expected_items(tmp_path, medmax):
    predictions = _predictions()[1:]  # rad-0 was never generated
    expect = tmp_path / "expect.jsonl"
    expect.write_bytes(
        _jsonl(vqa(r["id"], r["meta"]["eval_task"], r["answer"], None) for r in _predictions())
    )
    result = medmax("score", "--rules", "robust", "--expect", str(expect), "-q", input=_jsonl(predictions))
    lines = {x["id"]: x for x in parse_jsonl(result.stdout)}
    assert lines["rad-0"]["status"] == "missing" and lines["rad-0"]["score"] == 0.0
    assert all(lines[f"pmc-{i}"]["score"] == 1.0 for i in range(8))  # "(B)" parses under robust
    assert result.stderr == b""  # -q: no table, no summary line


def test_compare_paired_difference(tmp_path, medmax):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(medmax("score", "-q", input=_jsonl(_predictions())).stdout)
    b.write_bytes(_jsonl(_predictions(flip=True)))  # predictions: scored on the fly
    result = medmax("score", "--compare", str(a), str(b))
    out = orjson.loads(result.stdout)
    assert out["tasks"]["vqa_rad_closed"]["diff"] == round(4 / 12, 6)
    assert out["tasks"]["pmc_vqa"]["diff"] == 0.5 and out["tasks"]["pmc_vqa"]["ci95"][0] > 0
    assert out["macro"]["n_tasks"] == 2
    assert b"B - A" in result.stderr


def test_errors(tmp_path, medmax):
    dup = _jsonl([vqa("x", "vqa_rad_closed", "yes", "yes"), vqa("x", "vqa_rad_closed", "yes", "no")])
    result = medmax("score", input=dup, check=False)
    assert result.returncode == 1 and b"duplicate id" in result.stderr
    no_id = b'{"task": "vqa", "turns": [], "prediction": []}\n'
    result = medmax("score", input=no_id, check=False)
    assert result.returncode == 1 and b"'id'" in result.stderr
    result = medmax("score", "--rules", "fuzzy", input=b"", check=False)
    assert result.returncode == 2 and b"--rules" in result.stderr
    result = medmax("score", "--compare", "a.jsonl", "b.jsonl", "--summary", "s.json", input=b"", check=False)
    assert result.returncode == 2
    result = medmax("score", "--clip-model", str(tmp_path), input=b"", check=False)
    assert result.returncode == 2 and b"medmax-cli[clip]" in result.stderr
