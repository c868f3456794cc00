"""Observing runs: heartbeat lines off a terminal, exit codes on rejects, stats files and their merge,
the config file, log levels, `fetch pmc --dry-run` and the metric trackers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import orjson
import pytest

from conftest import REPO, SAMPLE
from fakes.pmc_server import FakeHttpServer, PmcFake

GOOD = {
    "id": "a",
    "source": "x",
    "license": "cc0",
    "kind": "qa",
    "question": "q?",
    "answer": "yes",
    "images": [],
}


def good(i: int) -> bytes:
    return orjson.dumps({**GOOD, "id": f"r{i}"}) + b"\n"


def start(args: list[str], tmp_path: Path, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    """A stage as under `nohup medmax ... 2> log`: stdin a pipe we hold, stderr a plain file."""
    log = tmp_path / "log"
    handle = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "medmax_cli", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=handle,
        env={**os.environ, **(env or {})},
    )
    handle.close()
    return proc, log


def wait_for_line(log: Path, needle: str, proc: subprocess.Popen, limit: float = 240) -> str:
    """Poll the log until a line containing `needle` shows up while the process still runs."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if needle in line:
                return line
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before a {needle!r} line:\n{log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"no {needle!r} line in time:\n{log.read_text()}")


STAGES = {
    "cat": ["cat"],
    "synthesize": ["synthesize", "--seed", "0"],
    "score": ["score"],
    "tokenize-images": ["tokenize-images", "--device", "cpu", "--batch-size", "1"],
    "pack": ["pack", "--seq-len", "256"],
    "validate": ["validate"],  # no --heartbeat flag (not a stage with rejects): env MEDMAX_HEARTBEAT
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_stage_leaves_heartbeat_lines_while_it_runs(stage, tmp_path, tiny_model_dir):
    """The stage is still running (its stdin is open) when its progress line appears in the log."""
    args = [*STAGES[stage], "--media-dir", str(tmp_path / "m")] + (
        ["--heartbeat", "0.1"] if stage != "validate" else []
    )
    if stage in ("tokenize-images", "pack"):
        args += ["--model", str(tiny_model_dir)]
    if stage == "pack":
        args += ["-o", str(tmp_path / "shards")]
    proc, log = start(args, tmp_path, env={"MEDMAX_HEARTBEAT": "0.1"} if stage == "validate" else None)
    try:
        proc.stdin.write(b"")  # nothing yet: the stage waits on its input, the heartbeat goes on
        proc.stdin.flush()
        line = wait_for_line(log, f"medmax {stage}: ", proc)
        assert proc.poll() is None
        assert " rec, " in line and "rec/s" in line and "rejected 0" in line
    finally:
        proc.stdin.close()
        proc.wait(timeout=240)
    assert "\r" not in log.read_text()  # no tqdm carriage returns in a log file


def test_fetch_pmc_heartbeat_counts_articles_against_the_hit_count(tmp_path):
    """fetch pmc: the total comes from Europe PMC's hitCount; the line has the percentage and an ETA."""
    from test_fetch_pmc import fake_articles

    release = threading.Event()
    with FakeHttpServer() as server:
        fake = PmcFake(server, fake_articles())

        def hold(path, query):  # the second article's metadata waits until the test has seen a line
            if path.endswith("PMC100002.1.json"):
                release.wait(120)
            return None

        server.dynamic.insert(0, hold)
        args = ["fetch", "pmc", "--query", "x", "--europepmc-url", fake.epmc, "--pmc-cloud-url", fake.cloud,
                "--page-size", "2", "--on-error", "skip", "--rejects", str(tmp_path / "rej.jsonl"),
                "--heartbeat", "0.1", "-o", str(tmp_path / "out.jsonl")]  # fmt: skip
        proc, log = start(args, tmp_path, env={"MEDMAX_MEDIA": str(tmp_path / "m")})
        try:
            line = wait_for_line(log, " 1/6 articles", proc)  # the first article done, the second held
            assert "%" in line and "articles/s" in line and "ETA" in line
        finally:
            release.set()
            proc.stdin.close()
            proc.wait(timeout=120)
    assert proc.returncode == 0, log.read_text()


def test_all_rejected_exits_1_and_rejects_are_replaced_per_run(tmp_path, medmax_inproc):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"not json\n{also not\n")
    rejects = tmp_path / "rejects.jsonl"
    args = ("cat", str(bad), "--on-error", "skip", "--rejects", str(rejects), "-o", str(tmp_path / "o.jsonl"))
    first = medmax_inproc(*args, check=False)
    assert first.returncode == 1 and b"all 2 records were rejected and none written" in first.stderr
    assert len(rejects.read_bytes().splitlines()) == 2
    medmax_inproc(*args, check=False)
    assert len(rejects.read_bytes().splitlines()) == 2  # replaced, not appended
    medmax_inproc(*args, "--rejects-append", check=False)
    assert len(rejects.read_bytes().splitlines()) == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_max_reject_rate(tmp_path, medmax_inproc):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_bytes(good(1) + good(2) + good(3) + b"oops\n")
    args = (
        "cat",
        str(mixed),
        "--on-error",
        "skip",
        "--rejects",
        str(tmp_path / "r.jsonl"),
        "-o",
        "/dev/null",
    )
    assert medmax_inproc(*args).returncode == 0  # default: something was written
    over = medmax_inproc(*args, "--max-reject-rate", "0.2", check=False)
    assert over.returncode == 1 and b"above --max-reject-rate 0.2" in over.stderr
    assert medmax_inproc(*args, "--max-reject-rate", "0.25").returncode == 0  # 1 of 4
    assert b"Exit status" in medmax_inproc("cat", "--help").stdout


def test_fetch_that_rejects_everything_exits_nonzero(tmp_path, medmax_inproc):
    """Issue 12: a fetch whose every image is missing writes nothing and must not exit 0."""
    result = medmax_inproc(
        "fetch", "jsonl", str(SAMPLE / "vqa.jsonl"), "--root", str(tmp_path), "--on-error", "skip",
        "--rejects", str(tmp_path / "r.jsonl"), "--media-dir", str(tmp_path / "m"), check=False,
    )  # fmt: skip
    assert result.returncode == 1 and result.stdout == b""
    assert b"none written" in result.stderr and (tmp_path / "r.jsonl").read_bytes()


def test_stats_files_of_shards_merge_to_the_whole(tmp_path, medmax_inproc):
    data = tmp_path / "in.jsonl"
    data.write_bytes(b"".join(good(i) for i in range(20)) + b"broken\n")
    whole = medmax_inproc("cat", str(data), "--on-error", "skip", "--rejects", str(tmp_path / "r"), "-o", "/dev/null",
                   "--stats", str(tmp_path / "whole.json"))  # fmt: skip
    assert whole.returncode == 0
    for i in range(3):
        medmax_inproc("cat", str(data), "--shard", f"{i}/3", "-o", str(tmp_path / f"o{i}"), "--stats",
               str(tmp_path / f"s{i}.json"), "--on-error", "skip", "--rejects", str(tmp_path / f"r{i}"))  # fmt: skip
    piece = json.loads((tmp_path / "s0.json").read_text())
    assert (
        piece["command"] == "medmax cat" and piece["shard"] == "0/3" and piece["settings"]["shard"] == "0/3"
    )
    assert piece["status"] == "ok" and set(piece) >= {
        "counts",
        "rejected",
        "seconds",
        "throughput",
        "started",
    }
    merged_path = tmp_path / "merged.json"
    medmax_inproc("stats", "merge", *(str(tmp_path / f"s{i}.json") for i in range(3)), "-o", str(merged_path))
    merged = json.loads(merged_path.read_text())
    written = sum(len((tmp_path / f"o{i}").read_bytes().splitlines()) for i in range(3))
    assert (
        merged["counts"]["out"]
        == written
        == 20
        == json.loads((tmp_path / "whole.json").read_text())["counts"]["out"]
    )
    whole_stats = json.loads((tmp_path / "whole.json").read_text())
    # each line read by one shard; the broken one was read too (in = out + rejected)
    assert merged["counts"]["in"] == whole_stats["counts"]["in"] == 21
    assert merged["rejected"] == whole_stats["rejected"] == {"malformed JSON": 1}  # the bad line: shard 0
    assert merged["shards"] == "3/3" and merged["shards_missing"] == []
    missing = medmax_inproc(
        "stats", "merge", str(tmp_path / "s0.json"), str(tmp_path / "s2.json"), check=False
    )
    assert missing.returncode == 1 and b"shards missing: 1/3" in missing.stderr
    twice = medmax_inproc("stats", "merge", str(tmp_path / "s0.json"), str(tmp_path / "s0.json"), check=False)
    assert twice.returncode == 1 and b"appears twice" in twice.stderr


def test_config_file_precedence_and_print_config(tmp_path, medmax_inproc):
    config = tmp_path / "run.toml"
    config.write_text('[cat]\nformat = "tar"\non-error = "skip"\n[fetch.pmc]\npage-size = 50\n')
    shown = medmax_inproc("--config", str(config), "cat", "--print-config").stdout.decode()
    assert 'format = "tar"  # config file' in shown and 'on-error = "skip"  # config file' in shown
    flag = medmax_inproc(
        "--config", str(config), "cat", "--print-config", "--format", "jsonl"
    ).stdout.decode()
    assert 'format = "jsonl"  # flag' in flag  # flags > file > defaults
    assert (
        "page-size = 50  # config file"
        in medmax_inproc("--config", str(config), "fetch", "pmc", "--print-config").stdout.decode()
    )
    # what --print-config prints is a config file that gives the same settings back
    (tmp_path / "back.toml").write_text(shown)
    assert tomllib.loads(shown)["cat"]["format"] == "tar"
    again = medmax_inproc("--config", str(tmp_path / "back.toml"), "cat", "--print-config").stdout.decode()
    assert tomllib.loads(again) == tomllib.loads(shown)
    config.write_text("[cat]\nfromat = 'tar'\n")
    bad = medmax_inproc("--config", str(config), "cat", check=False)
    assert bad.returncode == 2 and b"unknown key 'cat.fromat'" in bad.stderr and b"format" in bad.stderr
    config.write_text("[nosuch]\n")
    assert medmax_inproc("--config", str(config), "cat", check=False).returncode == 2


def test_log_levels(tmp_path, medmax_inproc):
    # synthesize warns (through logging) that visual_chat needs an LLM endpoint
    fetched = medmax_inproc("fetch", "jats", str(SAMPLE / "jats"), "--media-dir", str(tmp_path / "m")).stdout
    args = ("synthesize", "--media-dir", str(tmp_path / "m"), "-o", "/dev/null")
    assert b"WARNING" in medmax_inproc(*args, input=fetched).stderr
    assert b"WARNING" not in medmax_inproc(*args, input=fetched, env={"MEDMAX_LOG": "error"}).stderr
    assert (
        b"WARNING"
        in medmax_inproc(*args, "--log-level", "warning", input=fetched, env={"MEDMAX_LOG": "error"}).stderr
    )
    bad = medmax_inproc(*args, "--log-level", "loud", input=b"", check=False)
    assert bad.returncode == 2 and b"log level must be one of" in bad.stderr


def test_completion_is_on_and_deepspeed_is_hidden(medmax_inproc):
    assert b"--install-completion" in medmax_inproc("--help").stdout
    assert b"--deepspeed" not in medmax_inproc("finetune", "--help").stdout


def test_fetch_pmc_dry_run_asks_once_and_fetches_nothing(tmp_path, medmax_inproc):
    from test_fetch_pmc import fake_articles

    with FakeHttpServer() as server:
        fake = PmcFake(server, fake_articles())
        result = medmax_inproc("fetch", "pmc", "--query", "radiology", "--europepmc-url", fake.epmc, "--pmc-cloud-url",
                        fake.cloud, "--page-size", "4", "--rate", "2", "--dry-run",
                        env={"MEDMAX_MEDIA": str(tmp_path / "m")})  # fmt: skip
        log = list(server.log)
    err = result.stderr.decode()
    assert result.stdout == b""
    assert "hit count: 6 articles" in err and "requests: 2 search + at least 18 for articles" in err
    assert "expected time: at least 10 s" in err  # (2 + 18) requests at 2/s on one host
    assert "licences on the first page (4 articles): cc-by" in err
    assert [e["path"] for e in log] == ["/europepmc/webservices/rest/search"]
    assert log[0]["query"]["resultType"] == "core" and not (tmp_path / "m").exists()


def test_metric_trackers_are_imported_only_when_chosen(tmp_path):
    code = (
        "import sys; from medmax_cli.train.metrics import MetricsLog\n"
        f"m = MetricsLog({str(tmp_path / 'run')!r}, loggers='none')\n"
        "m.write({'step': 1, 'loss': 2.0, 'lr': 0.1, 'grad_norm': 1.0, 'tokens_per_s': 5.0, 'supervised_tokens': 3})\n"
        "m.close(); print(sorted(k for k in ('wandb', 'mlflow', 'tensorboard') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, env=os.environ)
    assert out.stdout.strip() == b"[]"
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1 and not (
        tmp_path / "run" / "tb"
    ).exists()
    from medmax_cli.train.metrics import TrackerError, check_loggers, parse_loggers

    assert parse_loggers("tensorboard, wandb") == ["tensorboard", "wandb"]
    with pytest.raises(TrackerError, match="choose from tensorboard, wandb, mlflow"):
        parse_loggers("neptune")
    for name in ("wandb", "mlflow"):
        try:
            __import__(name)
        except ImportError:
            with pytest.raises(TrackerError, match=f"pip install {name}"):
                check_loggers(name)


def test_tensorboard_tracker_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    from medmax_cli.train.metrics import MetricsLog

    m = MetricsLog(tmp_path / "run")
    m.write(
        {"step": 1, "loss": 2.0, "lr": 0.1, "grad_norm": 1.0, "tokens_per_s": 5.0, "supervised_tokens": 3}
    )
    m.close()
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_slurm_templates_name_the_merge_step():
    slurm = REPO / "examples" / "slurm"
    for stage in ("fetch", "tokenize-images", "pack"):
        text = (slurm / f"{stage}-array.sbatch").read_text()
        assert "--shard" in text and "SLURM_ARRAY_TASK_ID" in text and "--stats" in text
    assert "medmax stats merge" in (slurm / "merge-stats.sh").read_text()
