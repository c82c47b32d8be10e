"""An exported model is a chat model to other tools: transformers reads its chat template, special tokens and
generation config, renders lsi's prompts, and `generate` stops where lsi's sampler stops, with the same tokens."""

import json
import os

import numpy as np
import pytest

from lsi.training.trainer import export_hf

QUESTIONS = ("What is 12 + 7?", "What is 45 - 18?", "Compute 9 + 33.", "Is a whale a fish?",
             "How many legs do 2 dogs have?")


@pytest.fixture(scope="module")
def exported(smollm2, tmp_path_factory):
    from lsi.tasks.prompt_style import Prompter
    from lsi.vocab import load_vocabulary

    cfg, params = smollm2
    vocab = load_vocabulary("smollm2-135m-instruct")
    chat = Prompter.for_vocabulary(vocab, "chat")
    directory = export_hf(cfg, params, tmp_path_factory.mktemp("export") / "hf", vocab, stop_ids=chat.eos_ids)
    return directory, cfg, params, vocab, chat


def test_transformers_renders_lsis_chat_prompts_and_greedy_generation_matches(exported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lsi.batch_decoding import BatchSampler, SampleRequest
    from lsi.decoding import TransformerLM
    from lsi.sampling_methods import Greedy
    from lsi.tasks.prompt_style import chat_messages

    directory, cfg, params, vocab, chat = exported
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    generation = json.loads((directory / "generation_config.json").read_text())
    assert generation["eos_token_id"] == vocab.token_to_id("<|im_end|>")
    prompts = []
    for question in QUESTIONS:
        messages = chat_messages("zero_shot_cot", question)
        prompts.append(chat.prompt("zero_shot_cot", question))
        assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == prompts[-1]
    sampler = BatchSampler(TransformerLM(cfg), params, vocab, cfg.max_length, num_samples=1, max_new_tokens=12,
                           method=Greedy(), eos_ids=chat.eos_ids, batch_size=5, progress=False)
    ours = {c.example_id: c.token_ids[0] for c in sampler.run(
        [SampleRequest(str(i), p) for i, p in enumerate(prompts)])}
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=12, do_sample=False)  # the export's generation config
        assert out[0, ids.shape[1]:].tolist() == ours[str(i)], prompt


def test_bfloat16_export_halves_the_weights_and_loads_as_the_rounded_model(exported, tmp_path):
    from lsi.checkpoints import load_checkpoint

    directory, cfg, params, vocab, chat = exported
    half = export_hf(cfg, params, tmp_path / "bf16", vocab, stop_ids=chat.eos_ids, dtype="bfloat16")
    assert json.loads((half / "config.json").read_text())["torch_dtype"] == "bfloat16"
    size = os.path.getsize(half / "model.safetensors")
    assert 0.45 < size / os.path.getsize(directory / "model.safetensors") < 0.55
    _, loaded = load_checkpoint(half)
    for ours, theirs in zip(_leaves(params), _leaves(loaded)):  # bfloat16 keeps 8 significant bits
        np.testing.assert_allclose(theirs, ours, rtol=2 ** -8, atol=1e-30)


def _leaves(tree):
    import jax

    return [np.asarray(x, np.float32) for x in jax.tree.leaves(tree)]
