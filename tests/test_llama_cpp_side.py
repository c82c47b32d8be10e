"""The llama.cpp peer (benchmarks.llama_cpp_side): it samples exactly the workload (every sample max_new_tokens
tokens, EOS or not), reproducibly, and its greedy continuations come from the same decoding path. llama-cpp-python
is never an lsi dependency: these tests run only where it is installed (the benchmark venv); the agreement measure
of the check runs everywhere."""

import numpy as np
import pytest

from benchmarks import sampler
from benchmarks.llama_cpp_check import greedy_agreement


def test_greedy_agreement_names_the_first_differing_position():
    ours = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    theirs = np.array([[1, 2, 3, 4], [5, 6, 0, 8]])
    assert greedy_agreement(ours, theirs) == {"equal": [True, False], "all_equal": False,
                                              "first_difference": [None, 2], "equal_tokens_share": 7 / 8}


@pytest.fixture(scope="module")
def llama_side():
    pytest.importorskip("llama_cpp")
    from benchmarks.llama_cpp_side import LlamaCppSampler
    from lsi.checkpoints import resolve_model_path

    prompts = ((1, 504, 3458, 314, 253, 1431, 28, 198), (1, 22, 1735, 13, 17, 5788, 30))
    workload = sampler.Workload(prompts=prompts, num_samples=3, max_new_tokens=6, temperature=0.7, top_k=40, seed=0,
                                warmup=0, repeats=1)
    return LlamaCppSampler(resolve_model_path("smollm2-135m-instruct"), workload, 2, eos_id=2, prompts_per_batch=2)


def test_llama_cpp_samples_every_token_of_the_workload_reproducibly(llama_side):
    llama_side.run_once()
    tokens = llama_side.output
    assert tokens.shape == (2, 3, 6) and tokens.dtype == np.int32
    assert llama_side.check()["all_full_length"]
    np.testing.assert_array_equal(llama_side.call(), tokens)  # the chain is reseeded per call
    assert llama_side.call_memory("sampling")["sampling_peak_rss_mib"] > 0


def test_llama_cpp_greedy_is_prompt_by_prompt_the_same_as_together(llama_side):
    prompts = llama_side.workload.prompts
    together = llama_side.greedy(prompts, 5)
    assert together.shape == (2, 5)
    for row, prompt in enumerate(prompts):
        np.testing.assert_array_equal(llama_side.greedy([prompt], 5)[0], together[row])


def test_samples_sharing_a_prompt_cache_continue_it_as_the_prompt_alone_does(llama_side):
    """With a greedy chain, each of m samples decoded over the copied prompt sequence must give that prompt's own
    greedy continuation: the shared cache holds the prompt for every sample."""
    import llama_cpp

    from benchmarks.llama_cpp_side import greedy_chain, sample_group

    prompts, chain = llama_side.workload.prompts, greedy_chain()
    tokens = sample_group(llama_side.ctx, llama_side.batch, chain, prompts, 3, 5)  # [prompts, 3, 5]
    llama_cpp.llama_sampler_free(chain)
    np.testing.assert_array_equal(tokens, np.repeat(llama_side.greedy(prompts, 5)[:, None], 3, axis=1))
