"""Benchmark `fetch pmc` politeness: achieved request rate against a 20 requests/s limit.

Runs a crawl of the loopback imitation of Europe PMC + PMC Cloud (tests/fakes/pmc_server.py)
twice per repeat: with a naive limiter (sleep 1/rate before every request, the usual first
attempt) and with the client's token bucket. The naive one loses the request latency on every
call; the bucket spaces request *starts*, so it should reach >= 90% of the limit.

    .venv/bin/python bench/fetch.py [--quick] [--rate 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakes.jats_articles import article, png  # noqa: E402
from fakes.pmc_server import FakeArticle, FakeHttpServer, PmcFake  # noqa: E402
from medmax_cli.fetch.pmc import fetch_articles  # noqa: E402
from medmax_cli.fetch.state import FetchState  # noqa: E402
from medmax_cli.http import HttpClient, RateLimiter  # noqa: E402
from medmax_cli.media import MediaStore  # noqa: E402
from medmax_cli.streams import ErrorPolicy  # noqa: E402


class NaiveLimiter(RateLimiter):
    """Sleep a full interval before every request, whatever time has passed."""

    def acquire(self, host: str) -> float:
        _, rate = self.rate_for(host)
        self.sleep(1.0 / rate)
        return 1.0 / rate


def make_articles(n: int) -> list[FakeArticle]:
    arts = []
    for i in range(n):
        pmcid = f"PMC{200000 + i}"
        body = """<sec><title>R</title><p>See <xref ref-type="fig" rid="F1 F2">Figures 1-2</xref>.</p>
        <fig id="F1"><caption><p>One.</p></caption><graphic xlink:href="f1"/></fig>
        <fig id="F2"><caption><p>Two.</p></caption><graphic xlink:href="f2"/></fig></sec>"""
        arts.append(
            FakeArticle(pmcid, 1, article(pmcid, body), {"f1.png": png(2 * i), "f2.png": png(2 * i + 1)})
        )
    return arts


def crawl(fake: PmcFake, rate: float, naive: bool) -> tuple[float, float, int]:
    client = HttpClient(rates={}, default_rate=rate)
    if naive:
        client.limiter = NaiveLimiter({}, default=rate)
    with tempfile.TemporaryDirectory() as tmp, client:
        media = MediaStore(Path(tmp) / "media")
        state = FetchState(None, {})
        start = time.perf_counter()
        articles = 0
        for batch in fetch_articles(
            client,
            media=media,
            policy=ErrorPolicy("skip", stage="bench"),
            state=state,
            query="x",
            page_size=25,
            europepmc_url=fake.epmc,
            cloud_url=fake.cloud,
            media_workers=4,
        ):
            articles += bool(batch.key)
        seconds = time.perf_counter() - start
    return client.requests / seconds, articles / seconds, client.requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 articles, 1 repeat")
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s limit per host")
    args = parser.parse_args()
    n, repeats = (6, 1) if args.quick else (20, 3)
    with FakeHttpServer() as server:
        fake = PmcFake(server, make_articles(n))
        results: dict[str, list[tuple[float, float, int]]] = {"naive sleep": [], "token bucket": []}
        for _ in range(repeats):
            results["naive sleep"].append(crawl(fake, args.rate, naive=True))
            results["token bucket"].append(crawl(fake, args.rate, naive=False))
    print(
        f"fetch pmc, loopback server, {n} articles x 2 figures, limit {args.rate:g} requests/s, "
        f"median of {repeats}"
    )
    medians = {}
    for name, runs in results.items():
        req = statistics.median(r[0] for r in runs)
        art = statistics.median(r[1] for r in runs)
        medians[name] = req
        print(
            f"  {name:<13} {req:6.2f} requests/s ({100 * req / args.rate:5.1f}% of the limit), "
            f"{art:5.2f} articles/s, {runs[0][2]} requests"
        )
    print(f"  ratio token bucket / naive: {medians['token bucket'] / medians['naive sleep']:.2f}x")


if __name__ == "__main__":
    main()
