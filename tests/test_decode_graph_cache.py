"""The captured decode step is reused across batches of the same shape (issue 16): the KV cache's
buffers, and so the CUDA graph that reads them, go back to a small pool when a batch is done."""

from __future__ import annotations

import gc

import pytest
import torch


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from medmax_cli.model.load import load_model

    return load_model(tiny_model_dir)


def test_pool_reuses_a_released_cache_cleared_and_never_one_in_use(model):
    from medmax_cli.generate.decode import GRAPH_LENGTH_STEP, GRAPH_POOL, Runner

    runner = Runner(model)
    runner.graphs = True  # the pool's bookkeeping is the same on any device; only capture needs CUDA
    first = runner.new_cache(2, 100)
    assert first.length == GRAPH_LENGTH_STEP
    first.keys[0].fill_(1.0)
    first.valid[:, :7] = True
    first.pool_entry.graph = "captured"  # what _graph_step records after a capture
    ptr = first.keys[0].data_ptr()
    in_use = runner.new_cache(2, 120)  # same shape while `first` is alive: other buffers
    assert in_use.keys[0].data_ptr() != ptr and in_use.graph is None
    del first, in_use
    gc.collect()
    again = runner.new_cache(2, 200)  # same shape, earlier users gone: the latest buffers, as new
    assert again.keys[0].data_ptr() != ptr  # `in_use` took the pool slot of this shape
    assert not again.valid.any() and all(not k.any() for k in again.keys)
    again.pool_entry.graph = "captured-2"
    ptr2 = again.keys[0].data_ptr()
    del again
    assert runner.new_cache(2, 50).graph == "captured-2"  # the graph comes back with its buffers
    gc.collect()
    assert runner.new_cache(2, 50).keys[0].data_ptr() == ptr2
    runner.new_cache(3, 50)
    runner.new_cache(4, 50)
    assert len(runner._pool) <= GRAPH_POOL  # bounded: a pooled cache can be large on a 7B model


@pytest.mark.gpu
def test_one_capture_for_batches_of_the_same_shape_same_tokens_as_eager(tiny_model_dir):
    from medmax_cli.generate.decode import Runner, generate_text
    from test_generate import QUESTIONS, prompts_of, setup_engine

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    eager = setup_engine(tiny_model_dir, device="cuda", dtype="float32")
    captured = Runner(eager.model, compile=True)
    prompts = prompts_of(eager, QUESTIONS)
    batches = [prompts, prompts[::-1], [prompts[1], prompts[1], prompts[0]]]
    for seeds in ([1, 2, 3], [4, 5, 6], [7, 8, 9]):
        for batch in batches:
            kw = dict(
                budgets=[20] * 3, masks=eager.masks, seeds=torch.tensor(seeds, device="cuda"), temperature=1.0
            )
            got = [r.tokens for r in generate_text(captured, batch, **kw)]
            assert got == [r.tokens for r in generate_text(eager.runner, batch, **kw)]
    assert captured.captures == 1  # 9 batches of one shape: one capture, then replays
