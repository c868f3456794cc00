"""`medmax generate`: task instances in, predictions (text and generated images) out."""

from __future__ import annotations

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

HELP = """Generate text, images or both for task instances (the model's own decode loop).

--preset anole samples as Anole's reference inference does (text temperature 1.0, top-p 0.9,
repetition penalty 1.2, up to the context); --preset medmax-eval decodes as MedMax's evaluation
scripts (greedy text, their per-task budgets). Default: medmax-eval for evaluation items
(meta.eval_task), anole otherwise; sampling flags override either. Images are exactly
tokens-per-image codes with three-row classifier-free guidance, stored as PNG in the media store.
--mode auto picks per instance from its task.

  medmax generate --adapter runs/lora1 < eval.jsonl | medmax score > scores.jsonl
"""


def register(app: typer.Typer) -> None:
    @app.command("generate", help=HELP)
    def generate_command(
        input: str = InputArg,
        output: str = OutputOpt,
        model: str = typer.Option(
            None,
            "--model",
            help="Model directory [env MEDMAX_MODEL, medmax.toml; tiny: the random demo model].",
        ),
        adapter: str = typer.Option(
            None, "--adapter", help="PEFT adapter: a finetune run dir or adapter dir."
        ),
        no_merge: bool = typer.Option(False, "--no-merge", help="Keep the adapter unmerged (slower decode)."),
        mode: str = typer.Option("auto", "--mode", help="auto | text | image | interleaved."),
        preset: str = typer.Option(
            None,
            "--preset",
            help="anole | medmax-eval [medmax-eval for items with meta.eval_task, else anole].",
        ),
        max_new_tokens: int = typer.Option(
            None,
            "--max-new-tokens",
            help="New-token budget per record, image blocks included [the preset's: up to the context; "
            "medmax-eval VQA 1 or 60]. For MedMax's per-text-run budget use --text-run-tokens.",
        ),
        text_run_tokens: int = typer.Option(
            None,
            "--text-run-tokens",
            help="Most tokens per text run, afresh after each image (MedMax's and Anole's max_gen_len); "
            "an image block never counts against it [medmax-eval interleaved 1024, else none].",
        ),
        min_new_tokens: int = typer.Option(0, "--min-new-tokens", help="Suppress EOS until N new tokens."),
        seed: int = typer.Option(0, "--seed", help="Sampling seed (same seed, same output)."),
        batch_size: int = typer.Option(8, "--batch-size", help="Records decoded together."),
        prompt_format: str = typer.Option("sft", "--prompt-format", help="sft (turns closed by SEP) or raw."),
        temperature: float = typer.Option(
            None, "--temperature", help="Text temperature; 0 = greedy [anole 1.0, medmax-eval 0]."
        ),
        top_p: float = typer.Option(None, "--top-p", help="Text top-p when sampling [0.9]."),
        repetition_penalty: float = typer.Option(
            None, "--repetition-penalty", help="Text repetition penalty [1.2]."
        ),
        cfg_text: float = typer.Option(
            None, "--cfg-text", help="Image CFG weight on (full - image-only) [3.0]."
        ),
        cfg_image: float = typer.Option(
            None, "--cfg-image", help="Image CFG weight on (image-only - uncond) [1.2]."
        ),
        image_temperature: float = typer.Option(
            None, "--image-temperature", help="Image sampling temperature [0.7]."
        ),
        image_top_p: float = typer.Option(None, "--image-top-p", help="Image sampling top-p [0.9]."),
        device: str = typer.Option("auto", "--device", help="auto (cuda if available) | cpu | cuda[:N]."),
        dtype: str = typer.Option(
            "auto", "--dtype", help="auto (bf16 on cuda, fp32 on cpu) | float32 | bfloat16."
        ),
        compile: bool = typer.Option(
            False, "--compile", help="CUDA: capture the one-token decode step (graphs)."
        ),
        task: list[str] = typer.Option(None, "--task", help="Only instances of this task (repeatable)."),
        limit: int = typer.Option(
            None, "--limit", help="At most N instances per task (first N in input order)."
        ),
        encode_images: bool = typer.Option(
            True, "--encode-images/--no-encode-images", help="VQ-encode prompt images that lack tokens."
        ),
        fmt: str = FormatOpt,
        on_error: str = OnErrorOpt,
        rejects: Path = RejectsOpt,
        media_dir: Path = MediaDirOpt,
        shard: str = ShardOpt,
        quiet: bool = QuietOpt,
    ) -> None:
        from medmax_cli.generate.config import GenerateConfig

        config = GenerateConfig(
            mode=mode,
            preset=preset,
            max_new_tokens=max_new_tokens,
            text_segment=text_run_tokens,
            min_new_tokens=min_new_tokens,
            seed=seed,
            batch_size=batch_size,
            prompt_format=prompt_format,
            repetition_penalty=repetition_penalty,
            temperature=temperature,
            top_p=top_p,
            cfg_text=cfg_text,
            cfg_image=cfg_image,
            image_temperature=image_temperature,
            image_top_p=image_top_p,
        )
        try:
            config.check()
        except ValueError as exc:
            raise fail(str(exc)) from None
        if dtype not in ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"):
            raise fail(f"--dtype must be auto, float32, bfloat16 or float16; got {dtype!r}")
        if limit is not None and limit < 1:
            raise fail("--limit must be at least 1")
        if no_merge and adapter is None:
            raise fail("--no-merge needs --adapter")

        from medmax_cli.generate.stage import (
            generate_stage,
            resolve_adapter_dir,
            select_records,
            setup_engine,
        )
        from medmax_cli.model.load import ModelDirError
        from medmax_cli.model.resolve import resolve_model_dir

        try:
            model_dir = resolve_model_dir(model)
            if adapter is not None:
                resolve_adapter_dir(adapter)
        except (ModelDirError, FileNotFoundError) as exc:
            raise fail(str(exc)) from None
        with StageIO(
            "generate",
            input=input,
            output=output,
            fmt=fmt,
            on_error=on_error,
            rejects=rejects,
            media_dir=media_dir,
            shard=shard,
            quiet=quiet,
        ) as io:
            engine = setup_engine(
                model_dir,
                adapter=adapter,
                merge=not no_merge,
                device=device,
                dtype=dtype,
                compile=compile,
                media=io.media,
            )
            records = select_records(io.records, tasks=task, limit=limit, report=io.report)
            if encode_images:
                records = _with_tokens(records, model_dir, io, str(engine.runner.device))
            io.write_all(generate_stage(records, engine=engine, config=config, policy=io.policy))


def _with_tokens(records, model_dir, io, device):
    """Chain tokenize-images in front, so prompt images without VQ tokens get them (when installed)."""
    try:
        from medmax_cli.vision.tokenize import tokenize_images
    except ImportError:
        return records  # generate rejects such records with a reason
    return tokenize_images(records, model_dir=model_dir, media=io.media, policy=io.policy, device=device)
