"""Benchmark `fetch pmc` politeness: achieved request rate against a 20 requests/s limit.

Runs a crawl of the loopback imitation of Europe PMC + PMC Cloud (tests/fakes/pmc_server.py)
twice per repeat: with a naive limiter (sleep 1/rate before every request, the usual first
attempt) and with the client's token bucket. The naive one loses the request latency on every
call; the bucket spaces request *starts*, so it should reach >= 90% of the limit.

    .venv/bin/python bench/fetch.py [--quick] [--rate 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _harness import Bench, Measured  # noqa: E402
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


def crawl(fake: PmcFake, rate: float, naive: bool) -> Measured:
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
    return Measured(seconds, (articles, client.requests))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 articles, 1 repeat")
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s limit per host")
    args = parser.parse_args()
    n, repeats = (6, 1) if args.quick else (20, 3)
    bench = Bench("fetch", quick=args.quick, settings={"articles": n, "rate": args.rate})
    print(f"fetch pmc, loopback server, {n} articles x 2 figures, limit {args.rate:g} requests/s")
    with FakeHttpServer() as server:
        fake = PmcFake(server, make_articles(n))
        entry = bench.compare(
            "crawl",
            naive=lambda: crawl(fake, args.rate, naive=True),
            ours=lambda: crawl(fake, args.rate, naive=False),
            repeats=repeats,
            work=lambda out: out[1],
            unit="requests",
            names=("naive sleep", "token bucket"),
        )
    for name, side in entry["sides"].items():
        share = side["rate_median"] / args.rate
        bench.figure(f"share_of_limit/{name}", share, f"{name}: {100 * share:.1f}% of the limit")
    bench.finish()


if __name__ == "__main__":
    main()
