"""`medmax score`: score predictions with MedMax's rules (or robust ones), summarise with CIs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from medmax_cli.cliutil import (
    InputArg,
    MediaDirOpt,
    OnErrorOpt,
    OutputOpt,
    QuietOpt,
    RejectsOpt,
    StageIO,
    fail,
)

HELP = """Score predictions: one scored line per item on stdout, a Markdown table on stderr.

  medmax generate < eval.jsonl | medmax score --summary summary.json > scores.jsonl

  medmax score --compare base/scores.jsonl tuned/scores.jsonl

Closed and multiple-choice VQA use rules (--rules medmax reproduces MedMax exactly,
--rules robust parses free-form answers); open VQA and visual chat need an
OpenAI-compatible judge (--judge-url, --judge-model, key from MEDMAX_JUDGE_API_KEY only),
verdicts cached in --judge-cache; a judge request that gets no reply is judge_error (never
cached, asked again by the next run, exit status 1);
captioning, image generation and interleaved images need BiomedCLIP (--clip-model DIR).
See docs/score.md."""


def register(app: typer.Typer) -> None:
    @app.command("score", help=HELP)
    def score_command(
        input: str = InputArg,
        output: str = OutputOpt,
        rules: str = typer.Option("medmax", "--rules", help="medmax (MedMax's exact rules) or robust."),
        summary: Path = typer.Option(None, "--summary", help="Write the summary JSON here."),
        report: Path = typer.Option(None, "--report", help="Write summary.json, table.md, scores.png here."),
        seed: int = typer.Option(0, "--seed", help="Bootstrap seed (per-task seeds derive from it)."),
        n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap replicates."),
        cluster_by_image: bool = typer.Option(
            False, "--cluster-by-image", help="Resample images, not questions, in the bootstrap."
        ),
        expect: Path = typer.Option(
            None, "--expect", help="The eval items: those with no prediction score 0."
        ),
        judge_url: str = typer.Option(
            None, "--judge-url", help="OpenAI-compatible base URL (e.g. http://host/v1)."
        ),
        judge_model: str = typer.Option(
            None, "--judge-model", help="Judge model name (part of the cache key)."
        ),
        judge_cache: Path = typer.Option(
            None, "--judge-cache", help="Verdict cache dir [default .medmax-cache/judge with a judge]."
        ),
        judge_retries: int = typer.Option(
            2, "--judge-retries", help="Re-asks for an unparseable verdict (robust; medmax asks once)."
        ),
        judge_concurrency: int = typer.Option(
            4, "--judge-concurrency", help="Judge requests in flight at once."
        ),
        clip_model: Path = typer.Option(None, "--clip-model", help="Local BiomedCLIP (open_clip) directory."),
        compare: tuple[str, str] = typer.Option(
            None, "--compare", help="Two scored (or prediction) files: B - A with CIs."
        ),
        on_error: str = OnErrorOpt,
        rejects: Path = RejectsOpt,
        media_dir: Path = MediaDirOpt,
        quiet: bool = QuietOpt,
    ) -> None:
        from medmax_cli.score.stage import RULE_SETS

        if rules not in RULE_SETS:
            raise fail(f"--rules must be one of {', '.join(RULE_SETS)}; got {rules!r}")
        if judge_concurrency < 1:
            raise fail("--judge-concurrency must be at least 1")
        if n_boot < 1:
            raise fail("--n-boot must be at least 1")
        if judge_url and not judge_model:
            raise fail("--judge-url needs --judge-model (the model name is part of the verdict cache key)")
        if compare:
            if input != "-" or summary or report or expect:
                raise fail("--compare takes two files and no input, --summary, --report or --expect")
            return _compare(
                compare, rules=rules, seed=seed, n_boot=n_boot, cluster=cluster_by_image, media_dir=media_dir
            )
        if expect is not None and not expect.exists():
            raise fail(f"--expect file {expect} does not exist")

        from medmax_cli.score import summary as summ
        from medmax_cli.score.judge import JudgeError
        from medmax_cli.score.stage import score_stream

        with StageIO(
            "score",
            input=input,
            output=output,
            on_error=on_error,
            rejects=rejects,
            media_dir=media_dir,
            quiet=quiet,
            validate_input=False,  # the stage checks the fields it reads (id, prediction, answer)
            hash_input=True,  # the summary names its input by the sha256 of its bytes
        ) as io:
            scorer, judge_cache_obj = _scorer(
                rules, judge_url, judge_model, judge_cache, judge_retries, clip_model, io.media
            )
            expected = _read(expect, io.media) if expect else None
            try:
                kept = score_stream(
                    io.records,
                    scorer=scorer,
                    write=io.write,
                    policy=io.policy,
                    expected=expected,
                    workers=judge_concurrency
                    if scorer.judge is not None and scorer.judge.chat is not None
                    else 1,
                )
            except JudgeError as exc:
                raise fail(f"judge: {exc} (verdicts so far are cached; rerun to resume)", 1) from None
            finally:
                if judge_cache_obj is not None:
                    judge_cache_obj.close()
            provenance = {
                "rules": rules,
                "rules_version": scorer.version,
                "input_sha256": io.input_sha256,
                "input_records": io.report.counts["in"],
            }
            if scorer.judge is not None:
                # what decides the verdicts, not how many calls this run made: a cached rerun
                # must give the same summary bytes (call counts go to the stderr line)
                provenance["judge"] = {
                    "model": scorer.judge.model,
                    "protocol": scorer.judge.protocol,
                    "prompts": scorer.judge.prompt_versions,
                    # MedMax set temperature 0 on its client object but never sent it; we send it,
                    # with a fixed seed, and no max_tokens (as MedMax)
                    "temperature": 0.0,
                    "seed": 0,
                    "retries": judge_retries if scorer.judge.protocol == "robust" else 0,
                }
                io.report.count("judge calls", scorer.judge.calls)
                if scorer.judge.errors:
                    io.report.count("judge errors", scorer.judge.errors)
            result = summ.summarise(
                kept, seed=seed, n_boot=n_boot, cluster=cluster_by_image, provenance=provenance
            )
        _write_outputs(result, summary, report, quiet)
        if result["macro"]["judge_errors"]:
            raise fail(
                f"{result['macro']['judge_errors']} judge requests got no reply (status judge_error, "
                "summary complete: false); they are not cached: rerun to ask them again",
                1,
            )

    def _scorer(rules, judge_url, judge_model, judge_cache, judge_retries, clip_model, media):
        from medmax_cli.llm import API_KEY_ENV
        from medmax_cli.score.judge import JUDGE_KEY_ENV, Judge, VerdictCache, openai_chat
        from medmax_cli.score.stage import Scorer

        judge = cache = None
        if judge_model:
            cache = VerdictCache(judge_cache or Path(".medmax-cache/judge"))
            # the judge's own key only: another service's key never goes to the judge host
            api_key = os.environ.get(JUDGE_KEY_ENV) or None
            if judge_url and api_key is None and any(os.environ.get(k) for k in API_KEY_ENV):
                typer.echo(  # those who relied on the old fallback learn why the judge gets no key
                    f"medmax score: note: no {JUDGE_KEY_ENV}: the judge is sent no key "
                    f"({' / '.join(API_KEY_ENV)} belong to the synthesis LLM and are never sent to the judge)",
                    err=True,
                )
            chat = openai_chat(judge_url, judge_model, api_key=api_key) if judge_url else None
            judge = Judge(chat, model=judge_model, cache=cache, retries=judge_retries, protocol=rules)
        encoder = None
        if clip_model is not None:
            from medmax_cli.score.similarity import load_encoder

            try:
                encoder = load_encoder(clip_model)
            except (ImportError, FileNotFoundError) as exc:
                raise fail(str(exc)) from None
        return Scorer(rules=rules, judge=judge, encoder=encoder, media=media), cache

    def _read(path, media):
        from medmax_cli.streams import read_records

        with open(path, "rb") as handle:
            return list(read_records(handle, name=str(path), media=media))

    def _write_outputs(result, summary, report, quiet) -> None:
        from medmax_cli.score import summary as summ
        from medmax_cli.streams import AtomicFile

        if summary is not None:
            with AtomicFile(summary) as handle:
                handle.write(summ.to_json(result))
        if report is not None:
            from medmax_cli.score.report import write_report

            write_report(result, report)
        if not quiet:
            typer.echo(summ.markdown_table(result), err=True, nl=False)

    def _compare(paths, *, rules, seed, n_boot, cluster, media_dir) -> None:
        import orjson

        from medmax_cli.media import MediaStore, default_media_dir
        from medmax_cli.records import RecordError
        from medmax_cli.score.compare import compare, markdown_compare
        from medmax_cli.score.stage import Scorer, score_records
        from medmax_cli.streams import StreamError, read_records

        sides = []
        for path in paths:
            if not Path(path).is_file():
                raise fail(f"--compare file {path} does not exist or is not a regular file")
            # the stage reader: gzip, stream markers (a tee'd pipe), a cut stream, >64-bit integers,
            # lines that are not objects and duplicate ids are all named errors, never a traceback
            with open(path, "rb") as handle:
                try:
                    rows = list(read_records(handle, name=str(path), check=False))
                except (RecordError, StreamError) as exc:
                    raise fail(str(exc), 1) from None
            if rows and "prediction" in rows[0]:  # predictions: score them first (rules only, offline)
                with open(path, "rb") as handle:
                    try:
                        rows = list(
                            score_records(
                                read_records(handle, name=str(path)),
                                scorer=Scorer(
                                    rules=rules, media=MediaStore(media_dir or default_media_dir())
                                ),
                            )
                        )
                    except (RecordError, StreamError) as exc:
                        raise fail(str(exc), 1) from None
            sides.append(rows)
        try:
            result = compare(sides[0], sides[1], seed=seed, n_boot=n_boot, cluster=cluster)
        except (ValueError, KeyError) as exc:
            raise fail(f"{exc}", 1) from None
        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
        typer.echo(markdown_compare(result), err=True, nl=False)
