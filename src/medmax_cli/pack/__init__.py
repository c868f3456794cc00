"""`medmax pack`: token sequences + loss masks, image-aware truncation, bin packing, WebDataset shards.

Modules: `sequence` (instance -> Sample), `truncate` (length policy), `binpack` (best-fit-decreasing
over a bounded buffer), `shards` (writer), `manifest`, `reader` (PackedShards + collate_packed for
finetune), `stage` (the whole pipeline, called by the command). See docs/pack.md.
"""
