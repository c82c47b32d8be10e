"""Prompt styles: the paper's four formats written as plain few-shot text or as the model's own chat turns.

`lsi.Experiment.prompt_style` picks one for every stage:
- `plain`: the paper's base-model text, "Q: ...\\nA: ..." blocks (lsi.tasks.prompting).
- `chat`: the same content as conversation turns rendered by the checkpoint's chat template. Each few-shot exemplar is
  a user turn (its question) and an assistant turn (its answer); the question is the last user turn, followed by the
  template's generation prompt. The model then writes one assistant turn and ends it with the template's end-of-turn
  token, which stops generation like EOS does.
- `auto` (default): `chat` when the checkpoint carries a chat template, else `plain`.

Zero-shot CoT in chat style puts "Let's think step by step." at the end of the user turn, not at the start of the
assistant turn. Instruct models are trained with the instruction in the user turn and write the whole assistant turn
themselves; and a template cannot write a partial assistant turn in general (most close every assistant message with
the end-of-turn token), so an assistant-side trigger would need a different template rendering for every model.

Training targets in chat style are one whole assistant turn: whatever the template writes between the generation
prompt and the message text (usually nothing), the text, and the end-of-turn token. The loss covers exactly that;
what the template writes after the end-of-turn token (ChatML's newline) is neither trained nor generated.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from typing import Any

from lsi.tasks.answers import answer_sentence
from lsi.tasks.base import ExemplarSet
from lsi.tasks.prompting import DIRECT_ANSWER_PREFIX, STEP_BY_STEP, PromptFormat, build_prompt, build_target
from lsi.tasks.prompting import exemplar_answer, stop_strings

PLAIN, CHAT, AUTO = "plain", "chat", "auto"
STYLES = (AUTO, CHAT, PLAIN)
# Stands for an assistant message while the template's markup around one is worked out; never in real text.
_PROBE = "\x00lsi-assistant-message\x00"


class PromptStyleError(ValueError):
    """A prompt style that cannot be used with this vocabulary (no template, or a template we cannot split)."""


def resolve_prompt_style(style: str, vocab: Any, source: str = "") -> str:
    """'auto' -> 'chat' when `vocab` carries a chat template, else 'plain'; 'chat' without a template is an error."""
    from lsi.vocab import chat_template_of  # noqa: PLC0415 - keeps lsi.tasks importable without tokenizers

    if style not in STYLES:
        raise PromptStyleError(f"prompt_style must be one of {STYLES}, got {style!r}.")
    has_template = chat_template_of(vocab) is not None
    if style == AUTO:
        return CHAT if has_template else PLAIN
    if style == CHAT and not has_template:
        raise PromptStyleError(f"prompt_style 'chat' needs a chat template, but the tokenizer of {source or vocab!r} "
                               "carries none; use prompt_style 'plain' (or 'auto').")
    return style


def chat_messages(fmt: PromptFormat | str, question: str, exemplars: ExemplarSet | None = None
                  ) -> list[dict[str, str]]:
    """The conversation of one prompt format: exemplars as user/assistant turn pairs, the question last."""
    fmt = PromptFormat(fmt)
    messages: list[dict[str, str]] = []
    if fmt.is_few_shot:
        if exemplars is None:
            raise ValueError(f"Format {fmt.value} needs an exemplar set.")
        for index, e in enumerate(exemplars.exemplars):
            messages += [{"role": "user", "content": e.question},
                         {"role": "assistant", "content": exemplar_answer(exemplars, index, fmt.is_cot)}]
    user = question.strip()
    if fmt is PromptFormat.ZERO_SHOT_COT:
        user = f"{user}\n{STEP_BY_STEP}"
    return messages + [{"role": "user", "content": user}]


@dataclasses.dataclass(frozen=True)
class AssistantTurn:
    """How a template writes one assistant message after its generation prompt: `prefix` + text + `end`, where
    `end` ends with the end-of-turn token `end_id`."""

    prefix: str
    end: str
    end_id: int


def assistant_turn(vocab: Any) -> AssistantTurn:
    """Renders a probe conversation twice (with the generation prompt, and with an assistant reply) and reads the
    markup around the reply: the full render must extend the prompt, and a special token must close the reply."""
    user = [{"role": "user", "content": "1 + 1?"}]
    prompt = vocab.apply_chat_template(user, add_generation_prompt=True)
    full = vocab.apply_chat_template(user + [{"role": "assistant", "content": _PROBE}], add_generation_prompt=False)
    if not full.startswith(prompt) or _PROBE not in full[len(prompt):]:
        raise PromptStyleError(f"{vocab!r}: the chat template's rendering of an assistant reply does not continue "
                               "its generation prompt, so training targets cannot be cut from it; use prompt_style "
                               "'plain'.")
    prefix, after = full[len(prompt):].split(_PROBE, 1)
    ids = vocab.encode(after)
    special = {i for i, token in vocab.tokenizer.get_added_tokens_decoder().items() if token.special}
    closing = next((k for k, i in enumerate(ids) if i in special), None)
    if closing is None:
        raise PromptStyleError(f"{vocab!r}: the chat template writes no special end-of-turn token after an assistant "
                               f"reply (it writes {after!r}); use prompt_style 'plain'.")
    return AssistantTurn(prefix=prefix, end=vocab.detokenize(ids[: closing + 1]), end_id=int(ids[closing]))


@dataclasses.dataclass(frozen=True)
class Prompter:
    """Writes prompts, training targets and stop conditions in one resolved style ('plain' or 'chat')."""

    style: str = PLAIN
    vocab: Any = None  # needed for 'chat'; for 'plain' only its EOS is read

    def __post_init__(self) -> None:
        if self.style not in (PLAIN, CHAT):
            raise PromptStyleError(f"A Prompter's style is 'plain' or 'chat' (resolve 'auto' first), got "
                                   f"{self.style!r}.")
        if self.style == CHAT and self.vocab is None:
            raise PromptStyleError("The 'chat' style needs the vocabulary whose template renders the turns.")

    @classmethod
    def for_vocabulary(cls, vocab: Any, style: str = AUTO, source: str = "") -> "Prompter":
        return cls(resolve_prompt_style(style, vocab, source), vocab)

    @functools.cached_property
    def turn(self) -> AssistantTurn:
        return assistant_turn(self.vocab)

    def prompt(self, fmt: PromptFormat | str, question: str, exemplars: ExemplarSet | None = None) -> str:
        """The text the model continues: a question in format `fmt` (few-shot formats need `exemplars`)."""
        if self.style == PLAIN:
            return build_prompt(fmt, question, exemplars)
        return self.vocab.apply_chat_template(chat_messages(fmt, question, exemplars), add_generation_prompt=True)

    def request(self, instruction: str) -> str:
        """A free-form request (question generation): one user turn in chat style, the text itself in plain style."""
        if self.style == PLAIN:
            return instruction
        return self.vocab.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True)

    def target(self, fmt: PromptFormat | str, rationale: str, answer: str, answer_type: str) -> str:
        """The training target after `prompt(fmt, ...)`: plain text starts with a space and gets EOS from SeqIO; a
        chat target is the whole assistant turn, end-of-turn token included (see `targets_get_eos`)."""
        if self.style == PLAIN:
            return build_target(fmt, rationale, answer, answer_type)
        fmt = PromptFormat(fmt)
        text = rationale.strip() if fmt.is_cot else answer_sentence(answer, answer_type, DIRECT_ANSWER_PREFIX)
        return self.answer_turn(text)

    def answer_turn(self, text: str) -> str:
        """`text` as the model writes it in this style's answer position (a whole assistant turn in chat style)."""
        if self.style == PLAIN:
            return " " + text.strip()
        return f"{self.turn.prefix}{text.strip()}{self.turn.end}"

    @property
    def targets_get_eos(self) -> bool:
        """Whether SeqIO appends EOS to targets: plain targets end there; chat targets end with the turn's token."""
        return self.style == PLAIN

    def stop_strings(self, exemplars: ExemplarSet | None = None) -> tuple[str, ...]:
        """Plain few-shot text stops where the model starts the next exemplar; a chat turn ends with its token."""
        return stop_strings(exemplars) if self.style == PLAIN else ()

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Token ids that end a generation: the vocabulary's EOS, and in chat style the end-of-turn token."""
        eos = getattr(self.vocab, "eos_id", None)
        ids = [] if eos is None or eos < 0 else [int(eos)]
        if self.style == CHAT and self.turn.end_id not in ids:
            ids.append(self.turn.end_id)
        return tuple(ids)

    def describe(self) -> dict[str, Any]:
        """What manifests record: the style, and in chat style the template's fingerprint and turn markup."""
        record: dict[str, Any] = {"prompt_style": self.style}
        if self.style == CHAT:
            from lsi.vocab import chat_template_of  # noqa: PLC0415

            template = json.dumps(chat_template_of(self.vocab), sort_keys=True)
            record["chat_template_sha256"] = hashlib.sha256(template.encode("utf-8")).hexdigest()
            record["assistant_turn_end"] = self.turn.end
        return record


def plain_prompter(vocab: Any = None) -> Prompter:
    """The paper's base-model style, for callers that need no template."""
    return Prompter(PLAIN, vocab)

