"""lsi.chat_template and the chat side of lsi.vocab: every rendering equals transformers' `apply_chat_template`
(SmolLM2's GGUF template, and ChatML- and Llama-3-style templates written here beside small local tokenizers), BOS
follows the tokenizer, named templates are picked like transformers picks them, errors are ours and clear, and saved
vocabularies render the same in transformers and after reloading."""

from __future__ import annotations

import json
import pathlib

import pytest
from helpers.chat_vocabs import CHATML, CHATML_SPECIALS, FEW_SHOT, LLAMA3, LLAMA3_SPECIALS, SYSTEM
from helpers.chat_vocabs import chatml_directory, llama3_directory
from helpers.chat_vocabs import hf_directory, small_tokenizer
from lsi.chat_template import ChatTemplateError, render_chat
from lsi.checkpoints import registry
from lsi.vocab import HfTokenizerVocabulary, VocabularyError, chat_template_of, load_vocabulary

CONVERSATIONS = {
    "user": [FEW_SHOT[0]],
    "system_user": [SYSTEM, FEW_SHOT[0]],
    "few_shot": FEW_SHOT,
    "system_few_shot": [SYSTEM, *FEW_SHOT],
    "finished": [SYSTEM, *FEW_SHOT[:2]],
}

# Indented block tags without "-": trim_blocks and lstrip_blocks must remove their lines.
PLAIN = """\
{% for m in messages %}
    {% if m.role == 'system' %}
[{{ m.content }}]
    {% else %}
{{ m.role | upper }}: {{ m.content }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
ASSISTANT:{% endif %}
"""

TOOLS = [{"type": "function", "function": {"name": "add", "description": "a + b for <ints> & 'floats' — ünïcode",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "number"}}}}}]


def _transformers_tokenizer(directory: pathlib.Path, **kwargs):
    from transformers import AutoTokenizer  # noqa: PLC0415

    return AutoTokenizer.from_pretrained(str(directory), **kwargs)


def _theirs(reference, messages, add_generation_prompt, **kwargs) -> str:
    return reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **kwargs)


def _assert_renders_like(vocab, reference, conversations=CONVERSATIONS, **kwargs):
    for name, messages in conversations.items():
        for add_generation_prompt in (True, False):
            ours = vocab.apply_chat_template(messages, add_generation_prompt, **kwargs)
            assert ours == _theirs(reference, messages, add_generation_prompt, **kwargs), (name, add_generation_prompt)
            theirs_ids = reference.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                       return_dict=False, **kwargs)
            assert vocab.apply_chat_template_ids(messages, add_generation_prompt, **kwargs) == theirs_ids, name


@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory) -> pathlib.Path:
    """A default and a named template."""
    return chatml_directory(tmp_path_factory.mktemp("chatml") / "hf",
                            [{"name": "default", "template": CHATML}, {"name": "plain", "template": PLAIN}])


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory) -> pathlib.Path:
    return llama3_directory(tmp_path_factory.mktemp("llama3") / "hf")


# ----- SmolLM2's GGUF template -----


@pytest.fixture(scope="module")
def smollm2():
    return load_vocabulary("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def smollm2_reference():
    path = registry.resolve_model_path("smollm2-135m-instruct")
    return _transformers_tokenizer(path.parent, gguf_file=path.name)


def test_smollm2_gguf_template_renders_like_transformers(smollm2, smollm2_reference):
    assert smollm2.chat_template == smollm2_reference.chat_template
    assert chat_template_of(smollm2) == smollm2.chat_template
    assert smollm2.chat_template.startswith("{% for message in messages %}{% if loop.first and messages[0]['role']")
    _assert_renders_like(smollm2, smollm2_reference)
    assert smollm2.special_token_texts == {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                           "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>"}
    assert smollm2.special_token_texts == smollm2_reference.special_tokens_map
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.unk_id, smollm2.model_pad_id) == (1, 2, 0, 2)
    assert not smollm2.add_bos
    # The default system turn, and what closes an assistant turn.
    text = smollm2.apply_chat_template(CONVERSATIONS["finished"], add_generation_prompt=False)
    assert text.endswith("<|im_start|>assistant\n21 - 15 = 6. The answer is 6.<|im_end|>\n")
    assert smollm2.apply_chat_template([FEW_SHOT[0]]).startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n")


def test_gguf_named_templates_and_padding_token(tmp_path):
    """llama.cpp's layout: the default template under tokenizer.chat_template, others as tokenizer.chat_template.<name>
    (transformers reads only the default)."""
    import gguf  # noqa: PLC0415

    tokenizer = small_tokenizer(CHATML_SPECIALS)
    tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
    merges = [m if isinstance(m, str) else " ".join(m) for m in json.loads(tokenizer.to_str())["model"]["merges"]]
    types = [gguf.TokenType.CONTROL if t in CHATML_SPECIALS else gguf.TokenType.NORMAL for t in tokens]
    path = tmp_path / "small.gguf"
    writer = gguf.GGUFWriter(str(path), arch="qwen2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types(types)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_chat_template([{"name": "default", "template": CHATML}, {"name": "plain", "template": PLAIN}])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    vocab = load_vocabulary(path)
    reference = _transformers_tokenizer(tmp_path, gguf_file=path.name)
    assert vocab.chat_template == {"default": CHATML, "plain": PLAIN} and reference.chat_template == CHATML
    assert vocab.special_token_texts == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    assert vocab.model_pad_id == 0 and vocab.bos_id is None and not vocab.add_bos
    _assert_renders_like(vocab, reference, {"few_shot": FEW_SHOT, "system_user": CONVERSATIONS["system_user"]})
    assert vocab.apply_chat_template(FEW_SHOT[:1], template_name="plain").startswith("USER: Q: There are 15")


# ----- templates written here, beside small local tokenizers -----


def test_chatml_template_renders_like_transformers_with_tools_and_named_templates(chatml_dir):
    vocab, reference = load_vocabulary(chatml_dir), _transformers_tokenizer(chatml_dir)
    assert vocab.chat_template == {"default": CHATML, "plain": PLAIN} == reference.chat_template
    _assert_renders_like(vocab, reference)
    _assert_renders_like(vocab, reference, tools=TOOLS)  # transformers' tojson: no HTML escapes, no ASCII escapes
    assert "'floats' — ünïcode" in vocab.apply_chat_template([FEW_SHOT[0]], tools=TOOLS)
    for name, messages in CONVERSATIONS.items():  # transformers takes the name through `chat_template`
        assert vocab.apply_chat_template(messages, template_name="plain") == _theirs(
            reference, messages, True, chat_template="plain"), name
    assert vocab.apply_chat_template([FEW_SHOT[0]], template_name="plain").startswith("USER: Q: There are 15")
    with pytest.raises(ChatTemplateError, match=r"no chat template named 'chatml'; it has \['default', 'plain'\]"):
        vocab.apply_chat_template([FEW_SHOT[0]], template_name="chatml")
    assert vocab.special_token_texts == {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    assert (vocab.bos_id, vocab.eos_id, vocab.model_pad_id) == (None, 2, 0)


def test_llama3_template_renders_like_transformers(llama3_dir):
    vocab, reference = load_vocabulary(llama3_dir), _transformers_tokenizer(llama3_dir)
    assert vocab.chat_template == LLAMA3 == reference.chat_template
    _assert_renders_like(vocab, reference)  # today's date, from strftime_now on both sides
    _assert_renders_like(vocab, reference, date_string="26 Jul 2024")  # extra kwargs are template variables
    ids = vocab.apply_chat_template_ids([SYSTEM, FEW_SHOT[0]])
    assert ids[:2] == [vocab.bos_id, vocab.token_to_id("<|start_header_id|>")] and ids.count(vocab.bos_id) == 1
    text = vocab.apply_chat_template(CONVERSATIONS["finished"], add_generation_prompt=False, date_string="1 Jan 2025")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n21 - 15 = 6. The answer is 6.<|eot_id|>")
    assert "Today Date: 1 Jan 2025\n\n" in text


def test_bos_follows_the_tokenizer_like_transformers(smollm2, chatml_dir, llama3_dir, tmp_path):
    """add_bos is True for Llama 3 (its post-processor adds BOS) and False for SmolLM2 and ChatML; tokenizer_config's
    add_bos_token does not overrule tokenizer.json's post-processor, in transformers nor here."""
    assert load_vocabulary(llama3_dir).add_bos and not load_vocabulary(chatml_dir).add_bos and not smollm2.add_bos
    no_post_processor = hf_directory(tmp_path / "flag_only", small_tokenizer(LLAMA3_SPECIALS),
                                      bos_token="<|begin_of_text|>", add_bos_token=True, chat_template=LLAMA3)
    for directory in (llama3_dir, chatml_dir, no_post_processor):
        vocab, reference = load_vocabulary(directory), _transformers_tokenizer(directory)
        first = reference("Q: 3 cars")["input_ids"][0]
        assert vocab.add_bos == (vocab.bos_id is not None and first == vocab.bos_id), directory


# ----- errors -----


def test_raise_exception_in_a_template_is_our_error_with_its_message(llama3_dir):
    vocab = load_vocabulary(llama3_dir)
    with pytest.raises(ChatTemplateError, match=r"Conversation roles must be user or assistant, got tool") as error:
        vocab.apply_chat_template([{"role": "tool", "content": "5"}])
    assert error.value.template_message == "Conversation roles must be user or assistant, got tool"
    assert str(llama3_dir) in str(error.value)
    with pytest.raises(ChatTemplateError, match=r"line 1: unexpected '}'"):
        render_chat("{{ messages }", [FEW_SHOT[0]])
    with pytest.raises(ChatTemplateError, match="empty conversation"):
        vocab.apply_chat_template([])


def test_a_vocabulary_without_a_template_says_so(smollm2, tmp_path):
    smollm2.tokenizer.save(str(tmp_path / "tokenizer.json"))
    bare = load_vocabulary(tmp_path / "tokenizer.json")
    assert bare.chat_template is None and chat_template_of(bare) is None and bare != smollm2
    message = rf"{tmp_path}/tokenizer\.json carries no chat template.*prompt_style='plain'"
    with pytest.raises(VocabularyError, match=message):
        bare.apply_chat_template([FEW_SHOT[0]])
    assert chat_template_of(object()) is None  # e.g. seqio's SentencePieceVocabulary


# ----- saving -----


@pytest.mark.parametrize("source", ["smollm2", "chatml", "llama3"])
def test_saved_vocabulary_renders_the_same_in_transformers_and_after_reloading(source, smollm2, chatml_dir,
                                                                                llama3_dir, tmp_path):
    vocab = {"smollm2": smollm2, "chatml": load_vocabulary(chatml_dir), "llama3": load_vocabulary(llama3_dir)}[source]
    saved = vocab.save(tmp_path / "saved")
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] == vocab.add_bos
    reference = _transformers_tokenizer(saved)
    assert reference.special_tokens_map == vocab.special_token_texts
    _assert_renders_like(vocab, reference, date_string="26 Jul 2024")
    reloaded = load_vocabulary(saved)
    assert reloaded == vocab and reloaded is not vocab
    assert (reloaded.chat_template, reloaded.add_bos, reloaded.special_token_texts, reloaded.model_pad_id) == (
        vocab.chat_template, vocab.add_bos, vocab.special_token_texts, vocab.model_pad_id)
    for messages in CONVERSATIONS.values():
        assert reloaded.apply_chat_template_ids(messages, date_string="x") == vocab.apply_chat_template_ids(
            messages, date_string="x")


def test_templates_change_identity_and_stale_template_files_are_replaced(smollm2, tmp_path):
    other = HfTokenizerVocabulary(smollm2.tokenizer, bos_id=1, eos_id=2, unk_id=0, chat_template=PLAIN,
                                  special_tokens=smollm2.special_token_texts)
    assert other != smollm2 and other.chat_template == PLAIN
    assert other == HfTokenizerVocabulary(smollm2.tokenizer, bos_id=1, eos_id=2, unk_id=0,
                                          chat_template={"default": PLAIN}, special_tokens=smollm2.special_token_texts)
    (tmp_path / "chat_template.jinja").write_text(CHATML)  # would take priority over tokenizer_config.json
    other.save(tmp_path)
    assert not (tmp_path / "chat_template.jinja").exists() and load_vocabulary(tmp_path).chat_template == PLAIN


def test_chat_template_jinja_files_beside_the_config(chatml_dir, tmp_path):
    """transformers' newer layout: chat_template.jinja and additional_chat_templates/<name>.jinja beat the config."""
    directory = tmp_path / "hf"
    directory.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).write_text((chatml_dir / name).read_text())
    (directory / "chat_template.jinja").write_text(PLAIN + "\n")
    assert HfTokenizerVocabulary.from_directory(directory).chat_template == PLAIN + "\n"
    assert _transformers_tokenizer(directory).chat_template == PLAIN + "\n"
    (directory / "additional_chat_templates").mkdir()
    (directory / "additional_chat_templates" / "chatml.jinja").write_text(CHATML)
    vocab, reference = HfTokenizerVocabulary.from_directory(directory), _transformers_tokenizer(directory)
    assert vocab.chat_template == {"default": PLAIN + "\n", "chatml": CHATML} == reference.chat_template
    _assert_renders_like(vocab, reference, {"few_shot": FEW_SHOT})
    assert vocab.apply_chat_template(FEW_SHOT, template_name="chatml") == _theirs(reference, FEW_SHOT, True,
                                                                                   chat_template="chatml")


def test_named_templates_without_a_default_must_be_named(smollm2):
    vocab = HfTokenizerVocabulary(smollm2.tokenizer, eos_id=2, chat_template=[{"name": "a", "template": PLAIN},
                                                                               {"name": "b", "template": CHATML}])
    with pytest.raises(ChatTemplateError, match=r"none named 'default'; pass template_name, one of \['a', 'b'\]"):
        vocab.apply_chat_template([FEW_SHOT[0]])
    assert vocab.apply_chat_template([FEW_SHOT[0]], template_name="a") == "USER: " + FEW_SHOT[0]["content"] + \
        "\nASSISTANT:"
