"""`fetch pmc` against a loopback imitation of Europe PMC + the PMC Cloud bucket, with faults injected."""

from __future__ import annotations

import hashlib
import io
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import orjson
import pytest

from fakes.jats_articles import EXPECTED_GOOD, article, corpus, png
from fakes.pmc_server import FakeArticle, FakeHttpServer, PmcFake
from medmax_cli.fetch.pmc import fetch_articles, read_id_file
from medmax_cli.fetch.state import FetchState
from medmax_cli.http import HttpClient, RetryPolicy
from medmax_cli.records import validate
from medmax_cli.streams import ErrorPolicy

FAULTY = article(
    "PMC100005",
    """<sec><title>Faults</title><p>Panels <xref ref-type="fig" rid="F1 F2 F3 F4">1–4</xref>.</p>
    <fig id="F1"><label>Figure 1</label><caption><p>Retried.</p></caption><graphic xlink:href="a"/></fig>
    <fig id="F2"><label>Figure 2</label><caption><p>Slow.</p></caption><graphic xlink:href="b"/></fig>
    <fig id="F3"><label>Figure 3</label><caption><p>HTML.</p></caption><graphic xlink:href="c"/></fig>
    <fig id="F4"><label>Figure 4</label><caption><p>Bad md5.</p></caption><graphic xlink:href="d"/></fig></sec>""",
)
TEXT_ONLY = article(
    "PMC100006",
    """<sec><title>T</title><p>See <xref ref-type="fig" rid="F1">Figure 1</xref>.</p>
    <fig id="F1"><label>Figure 1</label><caption><p>Text only.</p></caption><graphic xlink:href="t1"/></fig></sec>""",
)
GOOD = EXPECTED_GOOD + ["PMC100005_1-F1", "PMC100005_1-F2"]


def fake_articles() -> list[FakeArticle]:
    arts = []
    for pmcid, (xml, files) in corpus().items():
        arts.append(FakeArticle(pmcid, 1, xml, files, license_code="CC BY", retracted=pmcid == "PMC100003"))
    arts[1].version = 2  # PMC100002.2: the listing must pick the latest version
    arts.append(
        FakeArticle(
            "PMC100005",
            1,
            FAULTY,
            {
                "a.png": png(11),
                "b.png": png(12),
                "c.png": b"<html><body>Not found</body></html>",
                "d.png": png(13),
            },
            bad_md5={"d.png"},
        )
    )
    arts.append(FakeArticle("PMC100006", 1, TEXT_ONLY, {}, in_cloud=False))
    return arts


def expected_ids() -> list[str]:
    rename = {"PMC100001": "PMC100001_1", "PMC100002": "PMC100002_2", "PMC100004": "PMC100004_1"}
    return [rename.get(i.split("-")[0], i.split("-")[0]) + "-" + i.split("-", 1)[1] for i in GOOD]


@pytest.fixture
def pmc():
    with FakeHttpServer() as server:
        fake = PmcFake(server, fake_articles())
        media = "/pmc-oa-opendata/PMC100005.1/a.png"
        server.fault(media, ("status", 429, {"Retry-After": "0"}), ("status", 500), ("reset",), ("truncate",))
        server.fault("/pmc-oa-opendata/PMC100005.1/b.png", ("slow", 2.5))
        server.fault("/europepmc/webservices/rest/search", ("status", 503))
        yield server, fake


def run_library(fake, media, tmp_path, **kw):
    client = HttpClient(
        rates={},
        default_rate=0,
        timeout=2.0,
        rng=random.Random(0),
        retry=RetryPolicy(attempts=6, backoff_base=0.001, backoff_max=0.01),
    )
    rejects = io.BytesIO()
    policy = ErrorPolicy("skip", rejects, stage="fetch")
    state = FetchState(tmp_path / "state.json", {"q": 1})
    records = []
    with client:
        for batch in fetch_articles(
            client,
            media=media,
            policy=policy,
            state=state,
            query="x",
            page_size=2,
            europepmc_url=fake.epmc,
            cloud_url=fake.cloud,
            **kw,
        ):
            records += batch.records
            if batch.key:
                state.finish(batch.key)
            else:
                state.set_cursor(batch.cursor)
    return records, [orjson.loads(line) for line in rejects.getvalue().splitlines()], policy, client


def test_crawl_survives_faults_and_rejects_bad_files(pmc, media, tmp_path):
    server, fake = pmc
    records, rejects, policy, client = run_library(fake, media, tmp_path)
    assert sorted(r["id"] for r in records) == sorted(expected_ids())
    for record in records:
        validate(record)
        assert record["source"] == "pmc" and record["images"][0]["url"].startswith(fake.cloud)
        assert media.path_of(record["images"][0]).is_file()
    assert {r["article"]["version"] for r in records if r["id"].startswith("PMC100002")} == {2}
    reasons = {r["record_id"]: r["reason"] for r in rejects}
    assert "not an image" in reasons["PMC100005_1-F3"]
    assert "md5 mismatch" in reasons["PMC100005_1-F4"]
    assert "Europe PMC text only" in reasons["PMC100006-F1"]
    assert reasons["PMC100003.1"].startswith("retracted article")
    assert reasons["PMC100002_2-V1"].startswith("video")
    assert "escapes the article folder" in reasons["PMC100002_2-F5"]
    assert server.hits("/pmc-oa-opendata/PMC100005.1/a.png") == 5  # 4 faults, then the image
    assert server.hits("/pmc-oa-opendata/PMC100005.1/b.png") == 2  # timed out once
    for record in records:  # every other good image was fetched exactly once
        path = record["images"][0]["url"][len(server.base) :]
        if not path.endswith(("/a.png", "/b.png")):
            assert server.hits(path) == 1, path
    assert server.hits("/europepmc/webservices/rest/PMC100006/fullTextXML") == 1
    assert client.retries >= 6
    # a second run with the same state fetches nothing again
    before = len(server.log)
    again, _, _, _ = run_library(fake, media, tmp_path)
    assert again == [] and all(e["path"].endswith("/search") for e in server.log[before:])


def test_license_filter_and_ids(pmc, media, tmp_path):
    server, fake = pmc
    fake.articles[1].license_code = "CC BY-NC"
    records, rejects, _, _ = run_library(fake, media, tmp_path, licenses=frozenset({"cc0"}))
    assert records == [] and sum("not selected" in r["reason"] for r in rejects) == 5
    assert read_id_file(["PMC1", "2 # c", "", "PMC1"]) == ["PMC1", "PMC2"]


def _command(fake, tmp_path, name, env, *extra):
    return [
        sys.executable,
        "-m",
        "medmax_cli",
        "fetch",
        "pmc",
        "--query",
        "cancer",
        "--page-size",
        "2",
        "--europepmc-url",
        fake.epmc,
        "--pmc-cloud-url",
        fake.cloud,
        "--timeout",
        "2.0",
        "--backoff-base",
        "0.001",
        "--on-error",
        "skip",
        "--rejects",
        str(tmp_path / f"{name}.rej"),
        "--state",
        str(tmp_path / f"{name}.state"),
        "-o",
        str(tmp_path / f"{name}.jsonl"),
        "-q",
        *extra,
    ]


def test_kill_and_resume_gives_the_same_records(pmc, tmp_path, medmax_inproc):
    """Only the killed run needs a process of its own; the full and the resumed runs are in-process."""
    server, fake = pmc
    env = {**os.environ, "MEDMAX_MEDIA": str(tmp_path / "media")}
    medmax_inproc(*_command(fake, tmp_path, "full", env)[3:], env=env)
    full = (tmp_path / "full.jsonl").read_bytes().splitlines()
    assert sorted(orjson.loads(line)["id"] for line in full) == sorted(expected_ids())

    # The same crawl, slowed down, killed once a few records are out, then resumed.
    cmd = _command(fake, tmp_path, "cut", env, "--rate", "15")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "cut.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_bytes().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    partial = out.read_bytes().splitlines()
    assert 3 <= len(partial) < len(full)
    hits_before = Counter(e["path"] for e in server.log)
    medmax_inproc(*cmd[3:], env=env)
    resumed = out.read_bytes().splitlines()
    assert sorted(resumed) == sorted(full)
    assert len({orjson.loads(line)["id"] for line in resumed}) == len(resumed)
    # the articles finished before the kill were not fetched again
    hits_after = Counter(e["path"] for e in server.log) - hits_before
    assert hits_after["/pmc-oa-opendata/PMC100001.1/PMC100001.1.xml"] == 0


def test_command_reports_a_dead_search_cleanly(tmp_path, medmax_inproc):
    with FakeHttpServer() as server:
        server.route("/rest/search", "<html>maintenance</html>", headers={"Content-Type": "text/html"})
        result = medmax_inproc(
            "fetch",
            "pmc",
            "--query",
            "x",
            "--europepmc-url",
            f"{server.base}/rest",
            "--pmc-cloud-url",
            f"{server.base}/b",
            "--backoff-base",
            "0.001",
            check=False,
            env={"MEDMAX_MEDIA": str(tmp_path / "m")},
        )
    assert result.returncode == 1 and b"not JSON" in result.stderr and b"Traceback" not in result.stderr
    both = medmax_inproc("fetch", "pmc", "--query", "x", "--ids", str(tmp_path / "ids"), check=False)
    assert both.returncode == 2 and b"exactly one of --query or --ids" in both.stderr
    state = {
        "version": 1,
        "params": {"query": "x", "ids": None, "license": None, "max": None},
        "cursor": "*",
        "done": ["PMC1"],
        "output_bytes": 100,
    }
    (tmp_path / "s.json").write_bytes(orjson.dumps(state))
    lost = medmax_inproc(
        "fetch",
        "pmc",
        "--query",
        "x",
        "--state",
        str(tmp_path / "s.json"),
        "-o",
        str(tmp_path / "o"),
        check=False,
    )
    assert lost.returncode == 2 and b"not this crawl's output" in lost.stderr


def real_shape(pmcid: str) -> bytes:
    return article(
        pmcid,
        """<sec><title>R</title><p>See <xref ref-type="fig" rid="F1 F2">Figures 1 and 2</xref>.</p>
    <fig id="F1"><label>Figure 1</label><caption><p>Axial CT of the chest showing a left lower lobe mass.</p></caption><graphic xlink:href="g1"/></fig>
    <fig id="F2"><label>Figure 2</label><caption><p>Corrupted.</p></caption><graphic xlink:href="g2"/></fig></sec>""",
    )


def test_real_metadata_shape_md5_checked_and_flags_kept(media, tmp_path, medmax_inproc):
    """The bucket's metadata as published: string URLs with ?md5=, the JSON possibly only under
    metadata/, licence codes incl. TDM, author-manuscript flag; a wrong md5 is a reject with that reason."""
    good, bad = png(21), png(22)
    arts = [
        FakeArticle(
            "PMC200001",
            1,
            real_shape("PMC200001"),
            {"g1.jpg": good, "g2.jpg": bad},
            license_code="CC BY-NC",
            bad_md5={"g2.jpg"},
            manuscript=True,
            metadata_dir_only=True,
        ),
        FakeArticle(
            "PMC200002", 3, real_shape("PMC200002"), {"g1.jpg": good, "g2.jpg": bad}, license_code="TDM"
        ),
        FakeArticle("PMC200003", 1, real_shape("PMC200003"), {"g1.jpg": good}, bad_md5={"PMC200003.1.xml"}),
    ]
    with FakeHttpServer() as server:
        fake = PmcFake(server, arts)
        meta = orjson.loads(server.routes["/pmc-oa-opendata/metadata/PMC200002.3.json"][2])
        assert all(isinstance(u, str) and "?md5=" in u for u in meta["media_urls"] + [meta["xml_url"]])
        assert "/pmc-oa-opendata/PMC200001.1/PMC200001.1.json" not in server.routes
        records, rejects, policy, _ = run_library(fake, media, tmp_path)
        ids = sorted(r["id"] for r in records)
        assert ids == ["PMC200001_1-F1", "PMC200002_3-F1", "PMC200002_3-F2"]
        first = next(r for r in records if r["id"] == "PMC200001_1-F1")
        ref = first["images"][0]
        assert ref["md5"] == hashlib.md5(good).hexdigest()
        assert hashlib.md5(media.path_of(ref).read_bytes()).hexdigest() == ref["md5"]
        assert ref["url"] == f"{fake.cloud}/PMC200001.1/g1.jpg"  # s3:// mapped, ?md5= dropped
        assert first["license"] == "cc-by-nc" and first["article"]["pmc"]["is_manuscript"] is True
        assert {r["license"] for r in records if r["id"].startswith("PMC200002")} == {"tdm"}
        reasons = {r["record_id"]: r["reason"] for r in rejects}
        assert reasons["PMC200001_1-F2"].startswith("md5 mismatch")
        assert reasons["PMC200003"].startswith("md5 mismatch") and "PMC200003.1.xml" in reasons["PMC200003"]
        assert policy.report.dropped["md5 mismatch for http"] == 2
        assert all(not e["query"] for e in server.log if e["path"].endswith((".jpg", ".xml")))
        # the command's summary counts each reason
        result = medmax_inproc(
            "fetch", "pmc", "--ids", str(_ids(tmp_path, ["PMC200001", "PMC200003"])),
            "--europepmc-url", fake.epmc, "--pmc-cloud-url", fake.cloud, "--on-error", "skip",
            "--rejects", str(tmp_path / "r.jsonl"), "--backoff-base", "0.001",
            env={"MEDMAX_MEDIA": str(tmp_path / "m2")},
        )  # fmt: skip
        assert len(result.stdout.splitlines()) == 1
        assert b"rejected 2 (md5 mismatch for http: 2)" in result.stderr, result.stderr
        # the mission's first pipe now gets figures from the bucket's real shape
        synth = medmax_inproc(
            "synthesize", "--tasks", "captioning,image_generation", input=result.stdout,
            env={"MEDMAX_MEDIA": str(tmp_path / "m2")},
        )  # fmt: skip
    tasks = sorted(orjson.loads(line)["task"] for line in synth.stdout.splitlines())
    assert tasks == ["captioning", "image_generation"], synth.stderr


def _ids(tmp_path, ids: list[str]):
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(ids) + "\n")
    return path
