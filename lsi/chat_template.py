"""Chat templates: a checkpoint's own Jinja template rendered as Hugging Face `transformers` renders it.

An instruct model is trained on conversations written by its chat template, so a prompt reaches it in-distribution
only when it is rendered by the same code path, character for character. `transformers`'
`PreTrainedTokenizerBase.apply_chat_template` is the reference every published template is written and tested against,
so this module reproduces its Jinja setup: a sandboxed environment (templates ship inside downloaded checkpoints and
are untrusted code), `trim_blocks` and `lstrip_blocks`, the loop-control extension, the `{% generation %}` tag, its
`tojson` filter, and the `raise_exception` and `strftime_now` globals. Templates see `messages`,
`add_generation_prompt`, `tools`, `documents` (None when not given), the special-token texts (`bos_token`, ...) and any
extra keyword arguments. The tests compare every rendering with transformers' own.

A checkpoint may carry several named templates (tokenizer_config.json's list of {"name", "template"} entries, a GGUF's
`tokenizer.chat_template.<name>` keys): `select_template` picks one the way transformers does.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

# A checkpoint's template: one string, or named strings (a "default" one is used unless another is asked for).
ChatTemplate = str | dict[str, str]

DEFAULT_NAME = "default"
# The name transformers picks, when present, for a conversation that passes tools.
TOOL_USE_NAME = "tool_use"


class ChatTemplateError(ValueError):
    """A chat template that cannot render a conversation: a syntax error, an undefined name, a bad template name, or
    the template's own `raise_exception(message)`, whose text is kept in `template_message`."""

    def __init__(self, message: str, template_message: str | None = None):
        super().__init__(message)
        self.template_message = template_message


class _TemplateRaised(Exception):
    """What `raise_exception` throws inside Jinja; `render_chat` turns it into a ChatTemplateError naming the source."""


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks the assistant's tokens for transformers' assistant masks. We
    render its body unchanged (as transformers does when no mask is asked for), so templates that use it still work."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller: jinja2.runtime.Macro) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; templates expect plain JSON (tool schemas in the prompt).
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    # Local time, as transformers gives it (Llama 3 templates write today's date into the system turn).
    return datetime.datetime.now().strftime(fmt)


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@functools.lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template (compiled once per distinct string: a conversation renders in microseconds after that)."""
    try:
        return _environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"line {e.lineno}: {e.message}") from e


def normalize_templates(value: Any, where: str = "chat_template") -> ChatTemplate | None:
    """A template as configs store it -> a string, or a dict of named strings (None stays None). Accepts a string, a
    {name: template} dict, or transformers' list of {"name": ..., "template": ...} entries; one entry named "default"
    is just a string, as transformers reads it."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        try:
            value = {entry["name"]: entry["template"] for entry in value}
        except (TypeError, KeyError) as e:
            raise ChatTemplateError(
                f"{where}: a list of named chat templates must hold {{'name': ..., 'template': ...}} entries"
            ) from e
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ChatTemplateError(f"{where}: expected a template string or named template strings, got {value!r:.200}")
    if not value:
        return None
    if list(value) == [DEFAULT_NAME]:
        return value[DEFAULT_NAME]
    return dict(value)


def select_template(templates: ChatTemplate, template_name: str | None = None, has_tools: bool = False,
                    where: str = "this tokenizer") -> str:
    """The template to render, picked as transformers picks: the named one when `template_name` is given; else
    "tool_use" for a conversation with tools, when there is one; else "default"; else an error listing the names. A
    single template answers to the name "default"."""
    if isinstance(templates, str):
        if template_name not in (None, DEFAULT_NAME):
            raise ChatTemplateError(f"{where} has one chat template, not one named {template_name!r}")
        return templates
    if template_name is not None:
        if template_name not in templates:
            raise ChatTemplateError(
                f"{where} has no chat template named {template_name!r}; it has {sorted(templates)}"
            )
        return templates[template_name]
    if has_tools and TOOL_USE_NAME in templates:
        return templates[TOOL_USE_NAME]
    if DEFAULT_NAME in templates:
        return templates[DEFAULT_NAME]
    raise ChatTemplateError(
        f"{where} has several chat templates and none named 'default'; pass template_name, one of {sorted(templates)}"
    )


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    special_tokens: Mapping[str, str] | None = None,
    where: str = "chat template",
    **kwargs: Any,
) -> str:
    """One conversation rendered by `template`, exactly as `transformers`' `apply_chat_template(..., tokenize=False)`.

    `special_tokens` maps template variable names to token texts ({"bos_token": "<|im_start|>", ...}); a name absent
    here is undefined in the template (it renders as ""), as in transformers. `kwargs` are further template variables
    and override special tokens of the same name. `where` names the template's source in error messages.
    """
    if not messages:
        raise ChatTemplateError(f"{where}: cannot render an empty conversation")
    chat = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"{where}: message {i} is {message!r:.100}, not a dict with 'role' and 'content'")
        # transformers drops None values first: templates test `'key' in message`, and would render "None" otherwise.
        chat.append({key: value for key, value in message.items() if value is not None})
    variables = {**(special_tokens or {}), **kwargs}
    try:
        return compile_template(template).render(
            messages=chat,
            tools=None if tools is None else list(tools),
            documents=None if documents is None else list(documents),
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
    except _TemplateRaised as e:
        raise ChatTemplateError(f"{where} refused the conversation: {e}", template_message=str(e)) from None
    except ChatTemplateError as e:
        raise ChatTemplateError(f"{where}: {e}") from e
    except jinja2.TemplateError as e:  # undefined names used as values, sandbox refusals
        raise ChatTemplateError(f"{where}: {type(e).__name__}: {e}") from e
