"""Small local tokenizers with chat templates in the manner of Qwen2 (ChatML) and Llama 3, as Hugging Face
directories: transformers reads them as the reference, lsi reads them as vocabularies. Nothing is downloaded."""

from __future__ import annotations

import json
import pathlib

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

SYSTEM = {"role": "system", "content": "You solve arithmetic word problems. Answer with a number."}
FEW_SHOT = [
    {"role": "user", "content": "Q: There are 15 trees. Workers plant until there are 21. How many did they plant?"},
    {"role": "assistant", "content": "21 - 15 = 6. The answer is 6."},
    {"role": "user", "content": "Q: 3 cars are parked and 2 more arrive. How many cars? "},
    {"role": "assistant", "content": " 3 + 2 = 5. The answer is 5.\n"},
    {"role": "user", "content": "Q: Leah had 32 chocolates (½ of them dark) and ate 35 — wait, 3. Left? 😀"},
]
# A ChatML template in Qwen2's manner: a default system turn when the conversation brings none, tools as JSON lines.
CHATML = """\
{%- if tools %}
    {%- set system = messages[0]['content'] if messages[0]['role'] == 'system' else 'You are a helpful assistant.' %}
    {{- '<|im_start|>system\\n' + system }}
    {{- '\\n\\nTools:' }}
    {%- for tool in tools %}
        {{- '\\n' + tool | tojson }}
    {%- endfor %}
    {{- '<|im_end|>\\n' }}
{%- elif messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- continue %}
    {%- endif %}
    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# A Llama-3-style template: BOS written by the template, header tokens, today's date, roles checked.
LLAMA3 = """\
{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}
{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}
{{- system_message + '<|eot_id|>' }}
{%- for message in messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('Conversation roles must be user or assistant, got ' + message['role']) }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}
    {%- if message['role'] == 'assistant' %}
        {%- generation %}{{- message['content'] | trim + '<|eot_id|>' }}{%- endgeneration %}
    {%- else %}
        {{- message['content'] | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

def small_tokenizer(specials: list[str], bos: str | None = None) -> tokenizers.Tokenizer:
    """A byte-level BPE trained on a few lines in a second, its special tokens first (ids 0...)."""
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [m["content"] for m in FEW_SHOT + [SYSTEM]] + ["system user assistant You are a helpful assistant."]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus * 4, trainer)
    if bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
        )
    return tokenizer


def hf_directory(directory: pathlib.Path, tokenizer: tokenizers.Tokenizer, **config) -> pathlib.Path:
    directory.mkdir()
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **config}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return directory



def chatml_directory(directory: pathlib.Path, templates=None) -> pathlib.Path:
    """Qwen2's shape: no BOS at all, <|im_end|> ends a turn, <|endoftext|> pads (`templates`: the chat_template
    entry, default the ChatML template alone)."""
    return hf_directory(
        directory, small_tokenizer(CHATML_SPECIALS),
        bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, add_bos_token=False,
        chat_template=CHATML if templates is None else templates,
    )


def llama3_directory(directory: pathlib.Path) -> pathlib.Path:
    """Llama 3's shape: the post-processor adds <|begin_of_text|>, and the template writes it too."""
    return hf_directory(
        directory, small_tokenizer(LLAMA3_SPECIALS, bos="<|begin_of_text|>"),
        bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", add_bos_token=True, chat_template=LLAMA3,
    )
