"""`medmax synthesize`: the six MedMax task families from source records (see docs/synthesize.md).

One small module per task builder (captioning, image_generation, interleaved, vqa, visual_chat,
report), plus the filters (dedup, near-duplicate images, decontamination), mixing and the stage
that chains them.
"""

from medmax_cli.synthesize.stage import build_record, load_exclude, synthesize

__all__ = ["synthesize", "load_exclude", "build_record"]
