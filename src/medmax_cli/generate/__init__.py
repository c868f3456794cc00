"""`medmax generate`: text, image and interleaved generation with the project's own decode loop.

Modules: `config` (the run's settings, torch-free), `prompt` (modes, prompt ids, tokens per image), `processors` (token masks, repetition
penalty), `sampling` (greedy / top-p with counter-based noise), `decode` (KV-cached forward and the
text loop), `cfg` (three-row classifier-free guidance for images), `interleave` (text <-> image
phases), `stage` (engine setup and the record stage). See docs/generate.md.
"""
