"""Prompt styles: the paper's formats as the model's own chat turns, chat training targets and their loss mask, and BOS
exactly once in sampler prompts and training rows."""

import json

import pytest

from helpers.toy import toy_task
from lsi.self_improve.formats import (
    FORMAT_PRESETS,
    FormatStageConfig,
    register_formatted_task,
    run_format_stage,
)
from lsi.tasks.prompt_style import PromptStyleError, Prompter, chat_messages, resolve_prompt_style
from lsi.tasks.prompting import STEP_BY_STEP, build_prompt
from lsi.training.data import load_seqio_examples, pack_examples
from lsi.vocab import encode_model_input, load_vocabulary


@pytest.fixture(scope="module")
def smollm2_vocab():
    return load_vocabulary("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def chat(smollm2_vocab):
    return Prompter.for_vocabulary(smollm2_vocab, "chat")


def _labels(task, count=2):
    questions = task.load_pool()[:count]
    return [{"question_id": q.id, "question": q.question, "answer": q.answer, "vote_count": 2, "num_parsed": 2,
             "num_samples": 2, "vote_share": 1.0, "vote_share_of_parsed": 1.0, "tie": False,
             "paths": [{"sample_index": j, "text": f" step {j}. The answer is {q.answer}."} for j in range(2)]}
            for q in questions]


def test_few_shot_formats_are_alternating_turns_and_zero_shot_is_one_user_turn():
    exemplars = toy_task().exemplars_for(toy_task().load_pool()[0])
    cot = chat_messages("few_shot_cot", "What is 2 + 3?", exemplars)
    assert [m["role"] for m in cot] == ["user", "assistant"] * len(exemplars.exemplars) + ["user"]
    first = exemplars.exemplars[0]
    assert cot[0]["content"] == first.question and cot[1]["content"].startswith(first.rationale)
    assert cot[1]["content"].endswith(f"The answer is {first.answer}.") and cot[-1]["content"] == "What is 2 + 3?"
    direct = chat_messages("few_shot_direct", "What is 2 + 3?", exemplars)
    assert direct[1]["content"] == f"The answer is {first.answer}."
    assert chat_messages("zero_shot_cot", " What is 2 + 3? ") == [
        {"role": "user", "content": f"What is 2 + 3?\n{STEP_BY_STEP}"}]
    assert chat_messages("zero_shot_direct", "What is 2 + 3?") == [{"role": "user", "content": "What is 2 + 3?"}]


def test_auto_is_chat_for_a_template_and_plain_without(smollm2_vocab, tmp_path):
    assert resolve_prompt_style("auto", smollm2_vocab) == "chat"
    assert resolve_prompt_style("plain", smollm2_vocab) == "plain"
    # The same tokenizer without its template.
    smollm2_vocab.tokenizer.save(str(tmp_path / "tokenizer.json"))
    bare = load_vocabulary(tmp_path / "tokenizer.json")
    assert resolve_prompt_style("auto", bare) == "plain"
    with pytest.raises(PromptStyleError, match="carries none"):
        resolve_prompt_style("chat", bare)
    with pytest.raises(PromptStyleError, match="one of"):
        resolve_prompt_style("fancy", smollm2_vocab)


def test_chat_prompts_targets_and_stops_follow_smollm2s_template(chat, smollm2_vocab):
    exemplars = toy_task().exemplars_for(toy_task().load_pool()[0])
    prompt = chat.prompt("few_shot_cot", "What is 2 + 3?", exemplars)
    assert prompt == smollm2_vocab.apply_chat_template(chat_messages("few_shot_cot", "What is 2 + 3?", exemplars))
    assert prompt.endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    assert chat.turn.prefix == "" and chat.turn.end == "<|im_end|>"
    assert chat.target("zero_shot_cot", " 2 + 3 = 5. The answer is 5. ", "5", "number") == \
        "2 + 3 = 5. The answer is 5.<|im_end|>"
    assert chat.target("few_shot_direct", "ignored", "5", "number") == "The answer is 5.<|im_end|>"
    assert chat.turn.end_id == smollm2_vocab.token_to_id("<|im_end|>") and chat.turn.end_id in chat.eos_ids
    assert chat.stop_strings(exemplars) == () and not chat.targets_get_eos
    # The prompt plus a target is exactly the template's rendering of the finished conversation.
    messages = chat_messages("zero_shot_cot", "What is 2 + 3?")
    full = smollm2_vocab.apply_chat_template(messages + [{"role": "assistant", "content": "The answer is 5."}],
                                             add_generation_prompt=False)
    assert full.startswith(chat.prompt("zero_shot_cot", "What is 2 + 3?") + chat.answer_turn("The answer is 5."))
    plain = Prompter()
    assert plain.prompt("few_shot_cot", "What is 2 + 3?", exemplars) == build_prompt(
        "few_shot_cot", "What is 2 + 3?", exemplars)
    assert plain.describe() == {"prompt_style": "plain"} and chat.describe()["prompt_style"] == "chat"


@pytest.mark.parametrize("preset", sorted(FORMAT_PRESETS))
@pytest.mark.parametrize("style", ["plain", "chat"])
def test_every_format_preset_trains_in_both_styles_with_the_loss_on_the_answer_only(
        preset, style, smollm2_vocab, tmp_path):
    import tensorflow as tf

    task = toy_task()
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _labels(task)))
    prompter = Prompter.for_vocabulary(smollm2_vocab, style)
    manifest = run_format_stage(task, tmp_path / "labels.jsonl", tmp_path / "formats",
                                FormatStageConfig(formats=preset, num_shards=1), prompter)
    assert manifest["config"]["prompt_style"] == style
    records = [tf.train.Example.FromString(r.numpy()) for r in
               tf.data.TFRecordDataset(str(next((tmp_path / "formats").glob("*.tfrecord"))))]
    text = {k: [r.features.feature[k].bytes_list.value[0].decode() for r in records] for k in ("inputs", "targets")}
    assert len(records) == 2 * 2 * len(FORMAT_PRESETS[preset])
    if style == "chat":
        assert all(i.startswith("<|im_start|>system") and i.endswith("<|im_start|>assistant\n") for i in text["inputs"])
        assert all(t.endswith("<|im_end|>") and not t.startswith(" ") for t in text["targets"])
    else:
        assert all(i.endswith("A:") or i.endswith(STEP_BY_STEP) for i in text["inputs"])
        assert all(t.startswith(" ") and "<|im_end|>" not in t for t in text["targets"])
    name = register_formatted_task(f"lsi_test_style_{style}_{preset}", tmp_path / "formats", smollm2_vocab)
    examples = load_seqio_examples(name)
    for example, target_text in zip(examples, text["targets"]):
        # Chat targets end with the turn's own token, not an extra EOS; plain ones get EOS (<|im_end|> here too).
        assert example.weight == 1.0 and smollm2_vocab.detokenize(example.targets) == target_text + ("" if style == "chat" else "<|im_end|>")
    packed = pack_examples(examples[:1], seq_length=2048)
    mask = packed["loss_mask"][0].astype(bool)
    assert smollm2_vocab.detokenize(packed["tokens"][0][mask]) == smollm2_vocab.detokenize(examples[0].targets)
    assert smollm2_vocab.detokenize(packed["tokens"][0][~mask & (packed["segment_ids"][0] > 0)]) == \
        text["inputs"][0]


def test_smollm2_inputs_get_no_bos(smollm2_vocab):
    assert not smollm2_vocab.add_bos
    assert encode_model_input(smollm2_vocab, "Q: 1 + 1?") == smollm2_vocab.encode("Q: 1 + 1?")


def test_sampling_stops_at_the_end_of_turn_token(chat, smollm2_vocab):
    """The scripted model writes '5', then <|im_end|>, then noise: the chat sampler stops at the turn's end."""
    from helpers.scripted_lm import ScriptedLM
    from lsi.batch_decoding import BatchSampler, SampleRequest
    from lsi.sampling_methods import Greedy

    five, end = smollm2_vocab.encode("5")[0], chat.turn.end_id
    noise = smollm2_vocab.encode(" Q")[0]
    lm = ScriptedLM((five, end, noise, noise), vocab_size=smollm2_vocab.vocab_size)
    sampler = BatchSampler(lm, {}, smollm2_vocab, 4096, num_samples=1, max_new_tokens=4, method=Greedy(),
                           stop_strings=chat.stop_strings(), eos_ids=chat.eos_ids, batch_size=1, progress=False)
    (completion,) = sampler.run([SampleRequest("q", chat.prompt("zero_shot_cot", "What is 2 + 3?"))])
    assert completion.texts == ["5"] and completion.finish_reasons == ["eos"]
    assert completion.token_ids == [[five, end]]


@pytest.fixture(scope="module")
def llama3_vocab(tmp_path_factory):
    from helpers.chat_vocabs import llama3_directory

    return load_vocabulary(llama3_directory(tmp_path_factory.mktemp("llama3") / "hf"))


def test_llama3_style_bos_appears_exactly_once_in_sampler_prompts_and_training_rows(llama3_vocab, tmp_path):
    from helpers.scripted_lm import ScriptedLM
    from lsi.batch_decoding import BatchSampler, SampleRequest
    from lsi.sampling_methods import Greedy

    bos = llama3_vocab.token_to_id("<|begin_of_text|>")
    assert llama3_vocab.add_bos and llama3_vocab.bos_id == bos
    plain, chat = (Prompter.for_vocabulary(llama3_vocab, style) for style in ("plain", "chat"))
    assert chat.turn.end == "<|eot_id|>" and chat.eos_ids == (llama3_vocab.token_to_id("<|eot_id|>"),)
    # Plain text gets BOS from the tokenizer's rule; a chat prompt already starts with the template's BOS.
    prompts = {p.style: p.prompt("zero_shot_cot", "What is 2 + 3?") for p in (plain, chat)}
    assert not prompts["plain"].startswith("<|begin_of_text|>") and prompts["chat"].startswith("<|begin_of_text|>")
    for prompt in prompts.values():
        ids = encode_model_input(llama3_vocab, prompt)
        assert ids[0] == bos and ids.count(bos) == 1
    # The sampler feeds the model exactly those ids.
    lm = ScriptedLM((chat.turn.end_id,), vocab_size=llama3_vocab.vocab_size)
    sampler = BatchSampler(lm, {}, llama3_vocab, 4096, num_samples=1, max_new_tokens=2, method=Greedy(),
                           eos_ids=chat.eos_ids, batch_size=2, progress=False)
    completions = {c.example_id: c for c in sampler.run([SampleRequest(k, v) for k, v in prompts.items()])}
    for style, prompt in prompts.items():
        assert completions[style].prompt_tokens == len(encode_model_input(llama3_vocab, prompt))
    assert completions["plain"].prompt_tokens == len(llama3_vocab.encode(prompts["plain"])) + 1
    assert completions["chat"].prompt_tokens == len(llama3_vocab.encode(prompts["chat"]))
    # Training rows: the format stage's examples as SeqIO reads them for the trainer.
    task = toy_task()
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _labels(task)))
    for prompter in (plain, chat):
        out = tmp_path / prompter.style
        run_format_stage(task, tmp_path / "labels.jsonl", out, FormatStageConfig(formats="all", num_shards=1),
                         prompter)
        examples = load_seqio_examples(register_formatted_task(f"lsi_test_llama3_{prompter.style}", out,
                                                               llama3_vocab))
        assert all(e.inputs[0] == bos and list(e.inputs).count(bos) == 1 for e in examples)
        assert all(bos not in e.targets for e in examples)
