"""`medmax synthesize`: source records -> MedMax task instances (wiring only; see medmax_cli.synthesize)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from medmax_cli.cliutil import (
    FormatOpt,
    InputArg,
    MediaDirOpt,
    OnErrorOpt,
    OutputOpt,
    QuietOpt,
    RejectsOpt,
    ShardOpt,
    StageIO,
    fail,
)
from medmax_cli.records import TASKS

HELP = (
    "Turn source records (figures, qa, reports) into MedMax task instances: captioning, image_generation, "
    "interleaved, vqa, report_understanding and (with --llm-url) visual_chat; deduplicated, "
    "decontaminated and mixed reproducibly for --seed.\n\n"
    "\b\n  medmax fetch jats examples/sample/jats | medmax synthesize --exclude eval.jsonl > instances.jsonl"
    "\n  medmax synthesize sources.jsonl --tasks vqa --seed 1 -o vqa.jsonl"
    "\n  medmax synthesize figs.jsonl --tasks visual_chat --llm-url http://127.0.0.1:8000/v1 --llm-model m"
)


def _default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medmax" / "llm"


def register(app: typer.Typer) -> None:
    @app.command("synthesize", help=HELP)
    def synthesize_command(
        input: str = InputArg,
        output: str = OutputOpt,
        fmt: str = FormatOpt,
        tasks: str = typer.Option(",".join(TASKS), "--tasks", help="Comma-separated task builders to run."),
        seed: int = typer.Option(0, "--seed", help="Seed for template choice and mixing."),
        exclude: list[Path] = typer.Option(
            None,
            "--exclude",
            help="Evaluation set(s): drop instances that overlap them (see --exclude-by). Repeatable.",
        ),
        exclude_by: str = typer.Option(
            "image",
            "--exclude-by",
            help="What makes an instance contaminated: image (it shows an eval image, exact or near "
            "duplicate; the default: VQA-RAD and SLAKE split by question, so test images also carry train "
            "questions), question (it asks an eval question, any image), or both (either). A table of "
            "the drops by eval source and match kind goes to stderr and to --stats (contamination).",
        ),
        no_dedup: bool = typer.Option(False, "--no-dedup", help="Keep exact duplicates."),
        near_dup_bits: int = typer.Option(
            4,
            "--near-dup-bits",
            help="pHash Hamming distance (0-16) that makes "
            "two images near duplicates; -1 turns the near-duplicate filter off.",
        ),
        min_caption_words: int = typer.Option(5, "--min-caption-words"),
        max_caption_words: int = typer.Option(400, "--max-caption-words"),
        ratio: str = typer.Option(
            None, "--ratio", help="Task mix, e.g. vqa=2,captioning=1 (unlisted tasks: kept)."
        ),
        max_per_task: int = typer.Option(None, "--max-per-task", help="At most N instances per task."),
        llm_url: str = typer.Option(
            None,
            "--llm-url",
            help="OpenAI-compatible endpoint for visual_chat "
            "(key from env MEDMAX_LLM_API_KEY or OPENAI_API_KEY).",
        ),
        llm_model: str = typer.Option(None, "--llm-model", help="Model name sent to the endpoint."),
        llm_temperature: float = typer.Option(0.2, "--llm-temperature"),
        llm_concurrency: int = typer.Option(4, "--llm-concurrency", help="LLM requests in flight."),
        llm_cache: Path = typer.Option(None, "--llm-cache", help="Reply cache folder [~/.cache/medmax/llm]."),
        trusted_llm_host: list[str] = typer.Option(
            None,
            "--trusted-llm-host",
            help="Host that may receive credentialed records (besides loopback). Repeatable.",
        ),
        on_error: str = OnErrorOpt,
        rejects: Path = RejectsOpt,
        media_dir: Path = MediaDirOpt,
        shard: str = ShardOpt,
        quiet: bool = QuietOpt,
    ) -> None:
        from medmax_cli.llm import ChatClient, LLMError, LLMSettings, ReplyCache, api_key_from_env
        from medmax_cli.streams import ErrorPolicy, read_records
        from medmax_cli.synthesize import load_exclude, synthesize
        from medmax_cli.synthesize.imagehash import MAX_THRESHOLD, ImageHasher
        from medmax_cli.synthesize.mixing import parse_ratio

        selected = [t.strip() for t in tasks.split(",") if t.strip()]
        if not selected or any(t not in TASKS for t in selected):
            raise fail(f"--tasks must list tasks among {', '.join(TASKS)}; got {tasks!r}")
        if not -1 <= near_dup_bits <= MAX_THRESHOLD:
            raise fail(f"--near-dup-bits must be -1 (off) or 0..{MAX_THRESHOLD}")
        if llm_url and not llm_model:
            raise fail("--llm-url needs --llm-model (the model name the endpoint serves)")
        if max_per_task is not None and max_per_task < 0:
            raise fail("--max-per-task must be >= 0")
        try:
            mix_ratio = parse_ratio(ratio)
        except ValueError as exc:
            raise fail(str(exc)) from None
        for path in exclude or []:
            if not path.is_file():
                raise fail(f"--exclude file {path} does not exist")
        if exclude_by not in ("image", "question", "both"):
            raise fail(f"--exclude-by must be image, question or both; got {exclude_by!r}")
        bits = None if near_dup_bits < 0 else near_dup_bits
        if quiet:
            logging.getLogger("medmax_cli.synthesize").setLevel(logging.ERROR)

        client = None
        if llm_url and "visual_chat" in selected:
            settings = LLMSettings(
                url=llm_url,
                model=llm_model,
                temperature=llm_temperature,
                seed=seed,
                concurrency=max(1, llm_concurrency),
                trusted_hosts=tuple(trusted_llm_host or ()),
            )
            client = ChatClient(
                settings, api_key=api_key_from_env(), cache=ReplyCache(llm_cache or _default_cache())
            )
        with StageIO(
            "synthesize",
            input=input,
            output=output,
            fmt=fmt,
            on_error=on_error,
            rejects=rejects,
            media_dir=media_dir,
            shard=shard,
            quiet=quiet,
        ) as io:
            index = None
            for path in exclude or []:
                hasher = ImageHasher(io.media, extra_roots=[path.parent])
                with open(path, "rb") as handle:
                    eval_records = read_records(
                        handle, name=str(path), policy=ErrorPolicy("fail"), media=io.media
                    )
                    index = (
                        load_exclude(eval_records, hasher, bits, by=exclude_by, name=path.name)
                        if index is None
                        else index.add_records(eval_records, name=path.name)
                    )
            try:
                io.write_all(
                    synthesize(
                        io.records,
                        policy=io.policy,
                        tasks=selected,
                        seed=seed,
                        client=client,
                        media=io.media,
                        exclude=index,
                        dedup=not no_dedup,
                        near_dup_bits=bits,
                        min_caption_words=min_caption_words,
                        max_caption_words=max_caption_words,
                        ratio=mix_ratio,
                        max_per_task=max_per_task,
                    )
                )
            except LLMError as exc:
                raise fail(str(exc), code=1) from None
            finally:
                if client is not None:
                    client.close()
            if index is not None and not quiet:
                from medmax_cli.synthesize.decontaminate import contamination_lines

                for line in contamination_lines(index):
                    typer.echo(line, err=True)
