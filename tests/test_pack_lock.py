"""Two `medmax pack -o DIR` runs into one directory: the second refuses, the first stays whole.

Real processes throughout: the lock is a kernel `flock` on DIR/.lock, so what matters is how it
behaves between processes (held while running, released when the holder dies).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest

from medmax_cli.pack.manifest import verify_shards
from medmax_cli.pack.reader import PackedShards
from medmax_cli.pack.shards import LOCK, PackedRow, ShardWriter, clear_outputs

N_RECORDS = 40


@pytest.fixture(scope="module")
def vq(tiny_model_dir):
    from medmax_cli.vision.fingerprint import vq_fingerprint

    return vq_fingerprint(tiny_model_dir)


def _records(vq, n=N_RECORDS):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        images = [
            {"sha256": "0" * 64, "path": "x.png", "tokens": rng.integers(0, 8192, 64).tolist(), "vq": vq}
        ]
        out.append(
            {
                "id": f"r{i:03d}",
                "task": "vqa",
                "source": "test",
                "license": "cc-by",
                "credential": False,
                "images": images,
                "turns": [
                    {"role": "user", "content": [{"image": 0}, {"text": f"What is shown in image {i}?"}]},
                    {"role": "assistant", "content": [{"text": f"finding number {i}"}]},
                ],
            }
        )
    return b"".join(json.dumps(r).encode() + b"\n" for r in out)


def _pack_cmd(out, model_dir):
    return [
        sys.executable,
        "-m",
        "medmax_cli",
        "pack",
        "-",
        "-o",
        str(out),
        "--model",
        str(model_dir),
        "--seq-len",
        "512",
        "--pack-buffer",
        "2",
        "--max-count",
        "2",
        "--batch-size",
        "1",
        "-q",
    ]


def _wait_for(predicate, proc, what):
    deadline = time.monotonic() + 120
    while not predicate():
        assert proc.poll() is None, f"{what}: process ended early: {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_second_concurrent_pack_refuses_and_first_stays_consistent(tmp_path, tiny_model_dir, vq, medmax):
    out = tmp_path / "shards"
    lines = _records(vq)
    first = subprocess.Popen(
        _pack_cmd(out, tiny_model_dir),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        half = lines[: len(lines) // 2]
        first.stdin.write(half)
        first.stdin.flush()
        lock = out / LOCK
        _wait_for(lambda: lock.is_file() and lock.read_text().strip() == str(first.pid), first, "the lock")
        _wait_for(lambda: any(out.glob("shard-*.tar")), first, "a first shard")
        before = {p.name: p.read_bytes() for p in out.glob("shard-*.tar")}  # finished: never rewritten
        second = medmax(*_pack_cmd(out, tiny_model_dir)[3:], input=lines, check=False)
        err = second.stderr.decode()
        assert second.returncode == 1, err
        assert f"{out} is being written by another pack run (pid {first.pid})" in err
        assert "Traceback" not in err
        assert {n: (out / n).read_bytes() for n in before} == before  # the refusing run touched nothing
        assert not (out / "manifest.json").exists()
        first.stdin.write(lines[len(half) :])
        first.stdin.close()
        assert first.wait(timeout=300) == 0, first.stderr.read().decode()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stderr.close()
    manifest = json.loads((out / "manifest.json").read_text())
    verify_shards(out, manifest)  # every shard named, present, with its recorded sha256
    assert sorted(p.name for p in out.glob("shard-*.tar")) == [s["name"] for s in manifest["shards"]]
    ids = Counter(i for row in PackedShards(out).iter_rows(shuffle=False) for i in row.meta["ids"])
    assert ids == Counter(f"r{i:03d}" for i in range(N_RECORDS))  # every sample exactly once
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


HOLDER = """
import sys
from medmax_cli.pack.shards import lock_output_dir
with lock_output_dir(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_lock_names_its_holder_and_a_dead_holder_does_not_block(tmp_path, tiny_model_dir, vq, medmax):
    out = tmp_path / "shards"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"held\n"
        refused = medmax(*_pack_cmd(out, tiny_model_dir)[3:], input=_records(vq, 4), check=False)
        assert refused.returncode == 1
        assert f"(pid {holder.pid})" in refused.stderr.decode()
        assert not any(out.glob("shard-*")) and not (out / "manifest.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel releases it
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()
    assert (out / LOCK).read_text().strip() == str(holder.pid)  # a stale lock file stays behind
    medmax(*_pack_cmd(out, tiny_model_dir)[3:], input=_records(vq, 4))
    assert PackedShards(out, verify=True).num_rows >= 1


def test_writers_use_unique_temp_names_and_clear_removes_them(tmp_path):
    row = PackedRow(
        np.arange(4, dtype=np.int32), np.arange(4, dtype=np.int32), np.array([0, 4], np.int32), {"ids": ["a"]}
    )
    a, b = ShardWriter(tmp_path), ShardWriter(tmp_path)
    a.write(row)
    b.write(row)  # both have shard 0 open at once: separate files
    temps = sorted(p.name for p in tmp_path.iterdir())
    assert len(temps) == 2 and all(n.startswith(".shard-000000.tar.") and n.endswith(".tmp") for n in temps)
    a.abort()
    (tmp_path / ".shard-000001.tar.tmp").write_bytes(b"")  # an older run's fixed name
    (tmp_path / "notes.txt").write_text("kept")
    clear_outputs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    b.abort()


@pytest.mark.parametrize(
    "text, reason",
    [
        (b"\x80\xffnot json", "not JSON"),
        (b"[1, 2]", "format 'list'"),
        (
            b'{"format": "medmax-packed-shards", "settings": {"seq_len": 8}, "shards": "shard-000000.tar"}',
            "'shards'",
        ),
        (
            b'{"format": "medmax-packed-shards", "settings": {"seq_len": 8}, '
            b'"shards": [{"name": "../x.tar", "rows": 1, "first_row": 0, "sha256": "0"}]}',
            "not a file in the directory",
        ),
        (
            b'{"format": "medmax-packed-shards", "settings": {"seq_len": "8"}, "shards": []}',
            "seq_len",
        ),
    ],
)
def test_a_malformed_manifest_is_refused_naming_the_file(tmp_path, text, reason):
    (tmp_path / "manifest.json").write_bytes(text)
    with pytest.raises(ValueError) as caught:
        PackedShards(tmp_path)
    assert str(tmp_path / "manifest.json") in str(caught.value) and reason in str(caught.value)
