"""The length policy: a sample longer than the row is cut on text, never inside an image block.

MedMax truncated at 2,048 tokens from the right with no regard for image boundaries, which leaves
half an image (a BOI without its EOI, or a partial grid) in the training data. Here the cut point
moves back to the start of any image block it would split, so whole image blocks past the cut are
dropped and no block is ever partial. A cut that leaves no supervised token rejects the sample.
"""

from __future__ import annotations

from medmax_cli.pack.sequence import IGNORE, Sample
from medmax_cli.records import RecordError


def cut_point(sample: Sample, seq_len: int) -> int:
    """The largest cut <= seq_len that does not fall strictly inside an image block."""
    cut = seq_len
    for start, end in sample.image_spans:
        if start < cut < end:
            cut = start
    return cut


def fit_length(sample: Sample, seq_len: int) -> Sample:
    """`sample` itself when it fits; else its prefix up to `cut_point` (marked truncated).

    Raises RecordError (with the lengths) when the prefix would hold no supervised token.
    """
    length = len(sample)
    if length <= seq_len:
        return sample
    cut = cut_point(sample, seq_len)
    if cut <= 1 or not (sample.labels[:cut] != IGNORE).any():
        raise RecordError(
            f"too long: {length} tokens > --seq-len {seq_len}, and cutting at {cut} (outside image blocks) "
            "leaves no supervised token"
        )
    spans = [(s, e) for s, e in sample.image_spans if e <= cut]
    return Sample(
        sample.input_ids[:cut].copy(),
        sample.labels[:cut].copy(),
        spans,
        id=sample.id,
        task=sample.task,
        source=sample.source,
        truncated=True,
    )
