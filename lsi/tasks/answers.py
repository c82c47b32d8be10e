"""Answer extraction, canonical forms and equality for the five answer types: number, option, nli, yes_no, drop.

Everything that reads a final answer (voting, pseudo-labels, scoring, calibration) goes through this module, so that
"1,000", "$1000.00" and "1000" vote together and a path that states no clear answer never votes at all.

Which answer sentence counts
----------------------------
An answer sentence is "... answer is X" (also "was", "would be", "will be", "should be", "must be", "the answer to
this question is"; any case, so "The answer is", "So the answer is" and "I think the answer is probably" all match).
The rule is: **the last answer sentence of the model's answer to this question**, where that answer ends at the first
sign of a new example after the first answer sentence: a line or sentence that starts "Q:", "Question:" or "Premise:".
Why:
- The paper's exemplars end with exactly one "The answer is X." Anything after it that starts a new example ("Q: ...")
  is the model inventing the next exemplar, and its answer sentence answers another question. The sampler usually
  cuts at "\\n\\nQ:", but not always (a different stop string, "Q:" without a blank line, a raw continuation), so the
  parser cuts too: "The answer is 5. Q: ... The answer is 7." gives 5.
- Inside the model's own answer, the last answer sentence is its conclusion: "the answer is the sum of 3 and 4 ...
  The answer is 7" and a self-correction "The answer is 5. No wait, the answer is 7" both end on the right statement.
- An answer sentence settles the parse: when it exists but cannot be read ("The answer is not 5, it is 6", "The answer
  is 5 or 6", "The answer is (b) or (c)", "The answer isn't clear", "The answer is 3 + 4" without a result), the
  result is None and no fallback is tried. A sentence that is not in the exemplars' form is a confused answer; as None
  it abstains from the vote and its path is never kept as training data (PAPER.md section 9, item 6), which is
  safer than any reading of it. In particular "not 5, it is 6" never gives 5.
Reading X: the text after the answer phrase, past fillers (":", quotes, "**", "therefore", "probably", "likely",
"clearly", ...; newlines too, so "The answer is:\n\n**6**" reads 6) up to the end of the sentence ("." "!" "?" followed
by a space or the end, or a newline; the period of "U.S." does not end it). A span that starts with a negation ("not",
"never", or the phrase "isn't"/"wasn't") gives None (except the NLI label "not possible to tell").

Fallbacks (off with strict=True, which reads only "... answer is" sentences)
------------------------------------------------------------------------------
1. An "Answer:" label ("Answer: 6", "Final answer: (b)") at the start of a line or sentence, read like an answer
   sentence (the last one before the first new example).
2. When there is neither, per type, in the text before the first new example:
   - number: the last number in the text (the usual GSM8K convention for a chain of thought that never states its
     answer; for a bare direct answer "18" it is the answer itself). Number words are not used here: "one" is a
     pronoun far more often than an answer.
   - option: the whole text is an option ("B", "(b)", "b) 12 apples"); otherwise the last parenthesized letter "(c)"
     among the first `num_options` letters.
   - nli, yes_no: the text starts with a label followed by punctuation or its end ("Yes, because ...", "No.").
   - drop: a short text (one line, at most 8 words, one sentence) is read as a whole answer; otherwise the last number.

Canonical forms, per type
-------------------------
- number: an exact decimal string without trailing zeros or exponent ("1000", "1234.5", "-3", "0.5"). Values that are
  not finite decimals keep an exact reduced fraction ("1/3"), not a rounded decimal, so nothing is lost before
  comparison; `answers_equal` compares numerically with relative tolerance 1e-6, so "1/3" equals "0.3333333" but not
  "0.33". Accepted inputs: "$1,234.50", "-3", "−3" (unicode minus), "3.0", ".5", "1/2", "25%" (-> "25": GSM8K and DROP
  write percentages without the sign), "1.5 million" (-> "1500000"; thousand/million/billion/trillion), trailing units
  and periods ("18 dollars.", "21 yards"), number words zero to ninety-nine ("five", "twenty-one") when they start
  the answer span ("The answer is five." but not "one of the cars"). In an answer span the first number is the
  answer, except that an expression "3 + 4 = 7" gives the number after the last "="; an expression with no "=" and
  hedges "5 or 6", "5 to 6" give None. Scientific notation is read as its value ("1e3" -> "1000", "2.5e-2" ->
  "0.025", "3E+2" -> "300"); a malformed one ("3e5a", "1e3.5") is no number, never its prefix "3". Mixed numbers
  ("2 1/2") and times ("3:30") are not read specially (the first number wins).
- option: one lowercase letter among the first `num_options` ("(b)", "B", "b)", "[b]", "option c", "choice (c)",
  "(B) 12 apples"). A lowercase bare "a" counts only when nothing but punctuation follows it, since "The answer is a
  dog" uses the article. The option must start the answer span (after fillers); a later letter is not searched for.
- nli: "yes", "no" or "it is not possible to tell". Also read: "it's not possible to tell", "not possible to tell",
  "impossible to tell", "cannot tell"/"can't tell"/"cannot be determined", and the dataset names "entailment",
  "contradiction", "neutral", and "true"/"false" (the prompt asks whether the hypothesis is true). "maybe" is not read:
  it is not one of the three options the prompt offers, and mapping a hedge onto "not possible to tell" would be a
  guess.
- yes_no: "yes" or "no" ("Yes.", "no,", and "true"/"false"). "no one", "no longer", "no more", "no matter" are not
  answers.
- drop: a span that starts with a number followed by at most three words and no other digits ("21 yards", "34-yard",
  "10 points", "14.8%", "five days") is that number in canonical form: PAPER.md scores DROP as exact match of the
  parsed number, units stripped. Not numbers but text: ordinals and decades ("9th Cavalry", "1990s"), scores and
  ranges ("24-19", "45 to 64", "two or more races"), dates ("4 July"), seasons ("2015/16"; DROP answers are never
  fractions), and number words that start a name ("Thirteen Years War"). Text ("Puerto Rican and Dominican",
  "2018 and 2016") is normalized: lowercase, split on whitespace and on hyphens between words, punctuation removed,
  number tokens canonical, articles (a, an, the) dropped, single spaces. An expression with a result ("1958 - 1951 =
  7") is its result; without one ("3 + 4") it is None.

Gold answers (`normalize_gold`) use the same canonical forms, but are never rejected for a leading negation (a DROP
gold can be "never rotated there"). Option golds may be 1-based digits ("3" -> "c", as in some ARC answer keys); NLI
golds may be "entailment"/"neutral"/"contradiction", "e"/"n"/"c" (ANLI's CSVs) or 0/1/2 in that order (the Hugging
Face ANLI and MNLI convention); yes/no golds may be bools, "true"/"false", RTE's "entailment"/"not_entailment", or a
BIG-bench target that starts "Yes." or "No.".
"""

from __future__ import annotations

import decimal
import fractions
import functools
import re
from typing import Any


NLI_YES, NLI_NO, NLI_NEUTRAL = "yes", "no", "it is not possible to tell"
NLI_LABELS = (NLI_YES, NLI_NO, NLI_NEUTRAL)
YES_NO_LABELS = ("yes", "no")
NUMBER_RELATIVE_TOLERANCE = fractions.Fraction(1, 10**6)
_DROP_MAX_UNIT_WORDS = 3
_MAX_DIGITS = 100  # longer digit runs are degenerate samples, not answers
_DROP_MAX_FALLBACK_WORDS = 8
_MONTH = re.compile(
    r"\s*(?:january|february|march|april|may|june|july|august|september|october|november|december|"
    r"jan|feb|mar|apr|jun|jul|aug|sept?|oct|nov|dec)\b\.?",
    re.IGNORECASE,
)
_NOT_UNIT_WORDS = frozenset(("or", "and", "to", "than", "of", "more", "less", "from", "between", "through"))

# --- answer sentences and example boundaries ----------------------------------------------------------------------

_ANSWER_PHRASE = re.compile(
    r"\banswer(?:\s+to\s+(?:the|this)\s+question)?\s+(?:is|was|would\s+be|will\s+be|should\s+be|must\s+be)"
    r"(?P<neg>n['’]t)?\b",
    re.IGNORECASE,
)
_ANSWER_LABEL = re.compile(
    r"(?:^|\n|(?<=[.!?])[ \t]+)[ \t*#]*(?:(?:the|my)[ \t]+)?(?:final[ \t]+|correct[ \t]+)?answer[ \t*]*:", re.IGNORECASE
)
_NEW_EXAMPLE = re.compile(r"(?:^|\n|(?<=[.!?])\s+)[ \t*#]*(?:Q|Question|Premise)[ \t]*:", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<![.][A-Z])[.](?=\s|$)|[!?](?=\s|$)|\n")  # "U.S. Army" is one span
_FILLER = re.compile(
    r"(?:[\s:*\"'“”‘’`_,=—]+|(?:therefore|thus|hence|so|then|now|probably|likely|most\s+likely|clearly|"
    r"definitely|certainly|indeed|actually|simply|just|obviously|surely|finally|that)\b)*",
    re.IGNORECASE,
)
_NEGATION = re.compile(r"(?:\bnot\b|\bnever\b|n['’]t\b)", re.IGNORECASE)
_HEDGE = re.compile(r"\s*,?\s*or\b", re.IGNORECASE)

# --- numbers -------------------------------------------------------------------------------------------------------

_NUMBER = re.compile(
    r"(?P<sign>(?<![\w.)\]])[-−–])?"
    r"(?P<currency>[$€£¥]\s?)?"
    r"(?P<sign2>[-−])?"
    r"(?:(?P<int>\d{1,3}(?:,\d{3})+(?![\d,]\d)|\d+)(?P<frac>\.\d+)?|(?P<frac_only>\.\d+))"
    r"(?:[eE](?P<exp>[-+−]?\d+)(?!\w|\.\d))?"  # scientific notation: "1e3", "2.5e-2", "3E+2"
    r"(?:/(?P<den>\d+)(?![\d.,/]\d))?"
    r"(?P<percent>\s?%)?"
    r"(?:\s+(?P<scale>thousand|million|billion|trillion)\b)?",
    re.IGNORECASE,
)
_EXPONENT_START = re.compile(r"[eE][-+−]?\d")
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_NUMBER_WORD = re.compile(
    r"(?P<tens>" + "|".join(_TENS) + r")(?:[\s-](?P<unit>" + "|".join(_UNITS[1:10]) + r"))?\b"
    r"|(?P<small>" + "|".join(sorted(_UNITS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
_EXPRESSION_CONTINUES = re.compile(r"\s*(?:[-+*/×÷−^]|x(?=\s))\s*[$(.\d]", re.IGNORECASE)
_RANGE_OR_HEDGE = re.compile(r"\s*,?\s*(?:or|to)\s+[$\-−]?\d", re.IGNORECASE)

# --- labels --------------------------------------------------------------------------------------------------------

_LABEL_END = r"(?=\s*(?:[.,;:!?)\"'*”’]|$))"
_OPTION = re.compile(
    r"(?P<word>(?:option|choice|letter)\s*)?"
    r"(?:\(\s*(?P<paren>[a-z])\s*\)|\[(?P<bracket>[a-z])\]|(?P<half>[a-z])\)|(?P<bare>[a-z])(?![\w'’-]))",
    re.IGNORECASE,
)
_PAREN_OPTION = re.compile(r"\(([a-z])\)", re.IGNORECASE)
_NLI_PATTERNS = (
    (re.compile(r"(?:it\s*(?:is|['’]s)\s+)?(?:not\s+possible|impossible)\s+to\s+(?:tell|say|know|determine)\b", re.I),
     NLI_NEUTRAL),
    (re.compile(r"(?:it\s+|we\s+|one\s+)?(?:cannot|can\s+not|can['’]t)\s+(?:be\s+)?"
                r"(?:tell|told|say|said|know|known|determine|determined)\b", re.I), NLI_NEUTRAL),
    (re.compile(r"neutral\b", re.I), NLI_NEUTRAL),
    (re.compile(r"(?:yes|true|entailment)\b", re.I), NLI_YES),
    (re.compile(r"(?:no|false|contradiction)\b(?!\s+(?:one|longer|more|matter)\b)", re.I), NLI_NO),
)
_YES_NO_PATTERNS = (
    (re.compile(r"(?:yes|true)\b", re.I), "yes"),
    (re.compile(r"(?:no|false)\b(?!\s+(?:one|longer|more|matter)\b)", re.I), "no"),
)
_GOLD_NLI = {
    "entailment": NLI_YES, "e": NLI_YES, "entails": NLI_YES, "0": NLI_YES,
    "neutral": NLI_NEUTRAL, "n": NLI_NEUTRAL, "1": NLI_NEUTRAL,
    "contradiction": NLI_NO, "c": NLI_NO, "2": NLI_NO,
}
_GOLD_YES_NO = {"yes": "yes", "y": "yes", "true": "yes", "1": "yes", "entailment": "yes",
                "no": "no", "n": "no", "false": "no", "0": "no", "not_entailment": "no", "not entailment": "no"}

# --- DROP text normalization ---------------------------------------------------------------------------------------

_ARTICLES = frozenset(("a", "an", "the"))


# --- numbers -------------------------------------------------------------------------------------------------------


def is_decimal_number(text: str) -> bool:
    """Whether canonical text is a decimal number ("-12.5"-shaped, as `format_number` writes finite decimals)."""
    return re.fullmatch(r"-?\d+(?:\.\d+)?", text) is not None


def format_number(value: fractions.Fraction) -> str:
    """Canonical text of an exact value: a finite decimal without trailing zeros, else a reduced fraction "p/q"."""
    denominator, exponent = value.denominator, 0
    for prime in (2, 5):
        count = 0
        while denominator % prime == 0:
            denominator //= prime
            count += 1
        exponent = max(exponent, count)
    if denominator != 1:
        return f"{value.numerator}/{value.denominator}"
    digits = len(str(abs(value.numerator))) + exponent + 2  # p / (2^a 5^b) needs at most len(p) + max(a, b) digits
    with decimal.localcontext() as context:
        context.prec = digits
        exact = decimal.Decimal(value.numerator) / decimal.Decimal(value.denominator)
    text = format(exact.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _number_value(match: re.Match) -> fractions.Fraction:
    """The exact value of a `_NUMBER` match; ValueError for a run of digits (or an exponent) too long to be an answer
    and for malformed scientific notation."""
    if sum(c.isdigit() for c in match.group(0)) > _MAX_DIGITS:
        raise ValueError(f"More than {_MAX_DIGITS} digits.")
    if match.group("frac_only"):
        value = fractions.Fraction(match.group("frac_only"))
    else:
        value = fractions.Fraction(match.group("int").replace(",", "") + (match.group("frac") or ""))
    if match.group("exp"):
        exponent = int(match.group("exp").replace("−", "-"))
        if abs(exponent) > _MAX_DIGITS:
            raise ValueError(f"Exponent {exponent} is beyond {_MAX_DIGITS} digits.")
        value *= fractions.Fraction(10) ** exponent
    elif _EXPONENT_START.match(match.string, match.end("frac_only") if match.group("frac_only")
                               else max(match.end("int"), match.end("frac"))):
        # "3e5a" is not a number; reading it as 3 would vote for a prefix of what the model wrote.
        raise ValueError("Malformed scientific notation.")
    if match.group("den"):
        denominator = int(match.group("den"))
        if denominator == 0:
            raise ZeroDivisionError
        value /= denominator
    if match.group("scale"):
        value *= _SCALES[match.group("scale").lower()]
    if match.group("sign") or match.group("sign2"):
        value = -value
    return value


def _number_word_value(match: re.Match) -> int:
    if match.group("small"):
        return _UNITS.index(match.group("small").lower())
    unit = _UNITS.index(match.group("unit").lower()) if match.group("unit") else 0
    return _TENS[match.group("tens").lower()] + unit


def _strip_fillers(span: str) -> str:
    return span[_FILLER.match(span).end():]


def _leading_number(span: str) -> tuple[fractions.Fraction, str] | None:
    """A number that starts `span` (digits or a number word) and the text after it."""
    word = _NUMBER_WORD.match(span)
    if word and not re.match(r"[\w'’]|\s+(?:of|hundred|thousand|million|billion)\b", span[word.end():], re.I):
        return fractions.Fraction(_number_word_value(word)), span[word.end():]
    number = _NUMBER.match(span)
    if number:
        try:
            return _number_value(number), span[number.end():]
        except (ZeroDivisionError, ValueError):
            return None
    return None


def _after_last_equals(span: str) -> tuple[fractions.Fraction, str] | None:
    """For "3 + 4 = 7 apples": the number after the last "=" and the text after it."""
    if "=" not in span:
        return None
    return _leading_number(_strip_fillers(span[span.rindex("=") + 1:]))


def _parse_number_span(span: str) -> str | None:
    span = _strip_fillers(span)
    found = _leading_number(span)
    if found is None:
        number = _NUMBER.search(span)
        if number is None or _NEGATION.search(span[: number.start()]):
            return None
        try:
            found = _number_value(number), span[number.end():]
        except (ZeroDivisionError, ValueError):
            return None
    value, rest = found
    if _EXPRESSION_CONTINUES.match(rest):
        found = _after_last_equals(rest)
        if found is None:
            return None
        value, rest = found
    if _RANGE_OR_HEDGE.match(rest) or _HEDGE.match(rest):
        return None
    return format_number(value)


def _read_number(text: str) -> fractions.Fraction | None:
    """A whole string that is one number, optionally with units ("1,234", "$5.00", "18 dollars", "51.0"); None if it
    holds anything else numeric."""
    text = text.strip().removeprefix("####").strip()
    found = _leading_number(_strip_fillers(text))
    if found is None:
        return None
    value, rest = found
    if re.search(r"\d", rest):
        return None
    return value


def _last_number(text: str) -> str | None:
    last = None
    for match in _NUMBER.finditer(text):
        last = match
    if last is None:
        return None
    try:
        return format_number(_number_value(last))
    except (ZeroDivisionError, ValueError):
        return None


# --- labels --------------------------------------------------------------------------------------------------------


def _parse_option_span(span: str, num_options: int) -> str | None:
    span = _strip_fillers(span)
    match = _OPTION.match(span)
    if match is None:
        return None
    letter = next(g for g in (match.group(k) for k in ("paren", "bracket", "half", "bare")) if g)
    if (match.group("bare") == "a" and not match.group("word")
            and not re.match(r"\s*(?:[.,;:!?)\"'*”’]|$)", span[match.end():])):
        return None  # the article: "The answer is a dog."
    if _HEDGE.match(span[match.end():]):
        return None
    letter = letter.lower()
    return letter if ord(letter) - ord("a") < num_options else None


def _parse_label_span(span: str, patterns, *, require_end: bool = False) -> str | None:
    span = _strip_fillers(span)
    for pattern, label in patterns:
        match = pattern.match(span)
        if match is None:
            continue
        rest = span[match.end():]
        if require_end and label != NLI_NEUTRAL and not re.match(_LABEL_END, rest):
            return None
        if _HEDGE.match(rest):
            return None
        return label
    return None


# --- DROP ----------------------------------------------------------------------------------------------------------


def normalize_drop_text(text: str) -> str:
    """Lowercase; split on whitespace and on hyphens between words ("34-yard" -> "34 yard"); numeric tokens canonical
    ("1,000" -> "1000", "3.0" -> "3", "14.8%" -> "14.8"); other tokens lose all punctuation ("U.S." -> "us"); articles
    dropped; single spaces."""
    tokens = []
    for raw in re.split(r"\s+|(?<=\w)[-–—]+(?=\w)", text.lower()):
        raw = raw.strip(".,;:!?\"'()[]{}“”‘’*")
        number = _NUMBER.fullmatch(raw)
        if number and not number.group("scale") and not number.group("den"):
            try:
                tokens.append(format_number(_number_value(number)))
                continue
            except (ZeroDivisionError, ValueError):
                pass
        token = re.sub(r"[\W_]+", "", raw)
        if token and token not in _ARTICLES:
            tokens.append(token)
    return " ".join(tokens)


def drop_number(text: str) -> str | None:
    """The canonical number of a DROP answer that is a number with at most three unit words ("21 yards", "34-yard",
    "14.8%", "five days"), else None: ordinals and decades ("9th Cavalry", "1990s"), scores and ranges ("24-19"),
    spans with "or", "to", "of", ... ("two or more races") and number words followed by more than one lowercase word
    ("Thirteen Years War"), fractions ("2015/16") and dates ("4 July") are text."""
    text = _strip_fillers(text)
    number = _NUMBER.match(text)
    if number and number.group("den"):
        return None  # "2015/16" is a season, "4/5" a date: DROP's numeric answers are never fractions
    found = _leading_number(text)
    if found is None:
        return None
    value, rest = found
    if re.match(r"[^\W\d_]", rest) or re.match(r"[-–]\d", rest) or _MONTH.match(rest):
        return None
    if _EXPRESSION_CONTINUES.match(rest):
        found = _after_last_equals(rest)
        if found is None:
            return None
        value, rest = found
    if re.search(r"\d", rest):
        return None
    words = re.findall(r"[^\W\d_]+", rest.split("(")[0])
    if len(words) > _DROP_MAX_UNIT_WORDS or _NOT_UNIT_WORDS.intersection(w.lower() for w in words):
        return None
    if not re.match(r"[-−–$€£¥.\d]", text) and (len(words) > 1 or any(not w.islower() for w in words)):
        return None  # a number word that starts a name: "Thirteen Years War"
    return format_number(value)


def _parse_drop_span(span: str, *, gold: bool = False) -> str | None:
    span = _strip_fillers(span)
    if not span.strip() or not gold and re.match(r"(?:not|never)\b", span, re.I):
        return None
    number = drop_number(span)
    if number is not None:
        return number
    first = _NUMBER.match(span)
    if not gold and first and _EXPRESSION_CONTINUES.match(span[first.end():]) \
            and not re.match(r"[-–]\d", span[first.end():]):
        return None  # an expression without a result, "3 + 4"; "24-19" is a score, read as text
    text = normalize_drop_text(span)
    return text or None


def _as_fraction(canonical: str) -> fractions.Fraction | None:
    try:
        return fractions.Fraction(canonical)
    except (ValueError, ZeroDivisionError):
        return None


def _numbers_close(a: fractions.Fraction, b: fractions.Fraction) -> bool:
    return abs(a - b) <= NUMBER_RELATIVE_TOLERANCE * max(abs(a), abs(b))


# --- the answer types ---------------------------------------------------------------------------------------------


class AnswerType:
    """One answer type's rules, together: reading an answer span, the fallback when there is no answer sentence,
    canonical forms of gold answers, equality and display. Adding a type is a subclass registered in `ANSWER_TYPES`
    (and its cases in tests/test_answers.py); every stage reaches it through the functions below."""

    name: str = ""
    numeric_inputs = False  # an int or float gold answer is a number of this type
    negation_is_an_answer = False  # a span starting "not" is an answer (NLI's "not possible to tell")

    def parse_span(self, span: str, num_options: int) -> str | None:
        """The canonical answer in an answer sentence's span, or None."""
        raise NotImplementedError

    def fallback(self, text: str, num_options: int) -> str | None:
        """The answer of a text with no answer sentence (cut at the first new example), or None."""
        raise NotImplementedError

    def canonical_text(self, text: str) -> str | None:
        """The canonical form of a non-empty answer written as a dataset or a model would write it."""
        raise NotImplementedError

    def canonical_bool(self, value: bool) -> str | None:
        del value
        return None

    def equal(self, a: str, b: str) -> bool:
        """Whether two canonical answers are the same answer."""
        return a == b

    def display(self, canonical: str, raw: Any) -> str:
        """How an answer sentence writes the answer `raw` (canonical form `canonical`)."""
        del raw
        return canonical


def _numbers_equal(a: str, b: str) -> bool:
    fa, fb = _as_fraction(a), _as_fraction(b)
    if fa is not None and fb is not None:
        return _numbers_close(fa, fb)
    return a == b


class NumberAnswer(AnswerType):
    name, numeric_inputs = "number", True

    def parse_span(self, span: str, num_options: int) -> str | None:
        return _parse_number_span(span)

    def fallback(self, text: str, num_options: int) -> str | None:
        return _last_number(text)

    def canonical_text(self, text: str) -> str | None:
        value = _read_number(text)
        return None if value is None else format_number(value)

    def equal(self, a: str, b: str) -> bool:
        return _numbers_equal(a, b)


class OptionAnswer(AnswerType):
    name = "option"

    def parse_span(self, span: str, num_options: int) -> str | None:
        return _parse_option_span(span, num_options)

    def fallback(self, text: str, num_options: int) -> str | None:
        whole = _strip_fillers(text)
        match = _OPTION.match(whole)
        is_direct = "\n" not in whole and len(whole.split()) <= 8 and not _PAREN_OPTION.search(whole, match.end()) \
            if match else False
        if is_direct and (not match.group("bare") or len(whole.strip(" .")) == 1):
            return _parse_option_span(whole, num_options)
        letters = [m.group(1).lower() for m in _PAREN_OPTION.finditer(text)]
        letters = [letter for letter in letters if ord(letter) - ord("a") < num_options]
        return letters[-1] if letters else None

    def canonical_text(self, text: str) -> str | None:
        if re.fullmatch(r"[1-9]", text):  # 1-based option index (some ARC answer keys)
            return chr(ord("a") + int(text) - 1)
        match = _OPTION.match(_strip_fillers(text))
        if match is None:
            return None
        letter = next(g for g in (match.group(k) for k in ("paren", "bracket", "half", "bare")) if g)
        return letter.lower()

    def display(self, canonical: str, raw: Any) -> str:
        return f"({canonical})"


class LabelAnswer(AnswerType):
    """A closed set of labels, each read by its patterns; gold answers also by a table of dataset spellings."""

    def __init__(self, name: str, patterns: tuple, gold: dict[str, str], *, gold_requires_end: bool,
                 negation_is_an_answer: bool = False, labels_from_bool: tuple[str, str] | None = None):
        self.name, self.patterns, self.gold, self.gold_requires_end = name, patterns, gold, gold_requires_end
        self.negation_is_an_answer, self.labels_from_bool = negation_is_an_answer, labels_from_bool

    def parse_span(self, span: str, num_options: int) -> str | None:
        return _parse_label_span(span, self.patterns)

    def fallback(self, text: str, num_options: int) -> str | None:
        return _parse_label_span(text, self.patterns, require_end=True)

    def canonical_text(self, text: str) -> str | None:
        key = re.sub(r"\s+", " ", text.lower()).strip(" .!\"'")
        if key in self.gold:
            return self.gold[key]
        return _parse_label_span(text, self.patterns, require_end=self.gold_requires_end)

    def canonical_bool(self, value: bool) -> str | None:
        if self.labels_from_bool is None:
            return None
        return self.labels_from_bool[0] if value else self.labels_from_bool[1]


class DropAnswer(AnswerType):
    name, numeric_inputs = "drop", True

    def parse_span(self, span: str, num_options: int) -> str | None:
        return _parse_drop_span(span)

    def fallback(self, text: str, num_options: int) -> str | None:
        first_line = text.split("\n")[0].strip()
        is_short = (len(first_line.split()) <= _DROP_MAX_FALLBACK_WORDS and "\n" not in text
                    and not _SENTENCE_END.search(first_line.rstrip(".!?")))
        if is_short:
            return _parse_drop_span(first_line.rstrip(".!?"))
        return _last_number(text)

    def canonical_text(self, text: str) -> str | None:
        return _parse_drop_span(text, gold=True)

    def equal(self, a: str, b: str) -> bool:
        return _numbers_equal(a, b)

    def display(self, canonical: str, raw: Any) -> str:
        if _as_fraction(canonical) is None:  # text keeps its casing
            return re.sub(r"\s+", " ", str(raw)).strip().rstrip(".!?")
        return canonical


ANSWER_TYPES: dict[str, AnswerType] = {t.name: t for t in (
    NumberAnswer(),
    OptionAnswer(),
    LabelAnswer("nli", _NLI_PATTERNS, _GOLD_NLI, gold_requires_end=False, negation_is_an_answer=True),
    LabelAnswer("yes_no", _YES_NO_PATTERNS, _GOLD_YES_NO, gold_requires_end=True, labels_from_bool=("yes", "no")),
    DropAnswer(),
)}


def get_answer_type(name: str) -> AnswerType:
    if name not in ANSWER_TYPES:
        raise ValueError(f"answer_type must be one of {tuple(ANSWER_TYPES)}, got {name!r}.")
    return ANSWER_TYPES[name]


# --- parsing model output ------------------------------------------------------------------------------------------


def _sentence_after(text: str, start: int) -> str:
    """The answer span: from `start`, past leading fillers (newlines included), to the end of the sentence."""
    rest = text[start:]
    rest = rest[_FILLER.match(rest).end():]
    end = _SENTENCE_END.search(rest)
    return rest[: end.start()] if end else rest


def _last_answer_span(text: str, pattern: re.Pattern) -> tuple[str, bool] | None:
    """(span, negated) of the last match of `pattern` before the first new example that follows the first match."""
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    boundary = _NEW_EXAMPLE.search(text, matches[0].end())
    end = boundary.start() if boundary else len(text)
    last = [m for m in matches if m.start() < end][-1]
    negated = "neg" in pattern.groupindex and last.group("neg") is not None
    return _sentence_after(text[:end], last.end()), negated


def _until_new_example(text: str) -> str:
    boundary = _NEW_EXAMPLE.search(text, 1)
    return text[: boundary.start()] if boundary else text


def parse_answer(text: str, answer_type: str, *, num_options: int = 5, strict: bool = False) -> str | None:
    """The canonical answer stated in a model's output (a chain of thought or a direct answer), or None when it states
    none that can be read. See the module docstring for the rules; `strict=True` reads only "... answer is X"
    sentences (no "Answer:" labels, no per-type fallbacks)."""
    kind = get_answer_type(answer_type)
    if not 1 <= num_options <= 26:
        raise ValueError(f"num_options must be in [1, 26], got {num_options}.")
    if not text or not text.strip():
        return None
    found = _last_answer_span(text, _ANSWER_PHRASE)
    if found is None and not strict:
        found = _last_answer_span(text, _ANSWER_LABEL)
    if found is not None:
        span, negated = found
        if negated:
            return None
        if not kind.negation_is_an_answer and re.match(r"(?:not|never)\b", _strip_fillers(span), re.I):
            return None
        return kind.parse_span(span, num_options)
    if strict:
        return None
    return kind.fallback(_until_new_example(text).strip(), num_options)


# --- gold answers, equality and answer sentences -------------------------------------------------------------------


def canonicalize(answer: Any, answer_type: str) -> str | None:
    """The canonical form of an answer given as a dataset would write it (or already canonical), or None when it
    cannot be read as `answer_type`. Numbers, bools and strings are accepted."""
    kind = get_answer_type(answer_type)
    if answer is None:
        return None
    if isinstance(answer, bool):
        return kind.canonical_bool(answer)
    if isinstance(answer, (int, float)):
        if not kind.numeric_inputs or answer != answer or answer in (float("inf"), float("-inf")):
            return None
        return format_number(fractions.Fraction(str(answer)))
    return _canonical_text(str(answer).strip(), answer_type)


@functools.lru_cache(maxsize=1 << 16)
def _canonical_text(text: str, answer_type: str) -> str | None:
    # Cached: self-consistency scoring compares the same few answers many times (every subset of every question).
    return get_answer_type(answer_type).canonical_text(text) if text else None


def answer_key(answer: str, answer_type: str) -> tuple[str | None, str]:
    """(canonical form or None, the answer as lower-case text): what `keys_equal` compares, computed once."""
    return canonicalize(answer, answer_type), str(answer).strip().lower()


def keys_equal(a: tuple[str | None, str], b: tuple[str | None, str], answer_type: str) -> bool:
    """`answers_equal` on two `answer_key`s: canonical forms by the type's equality, else the texts."""
    if a[0] is None or b[0] is None:
        return a[1] == b[1]
    return get_answer_type(answer_type).equal(a[0], b[0])


def normalize_gold(answer: Any, answer_type: str) -> str:
    """Canonical form of a dataset's gold answer ("1,234" -> "1234", "C" -> "c", "entailment" -> "yes", True -> "yes",
    "34-yard" -> "34"); a ValueError that names the answer when it cannot be read."""
    canonical = canonicalize(answer, answer_type)
    if canonical is None:
        raise ValueError(f"Cannot read gold answer {answer!r} as a {answer_type!r} answer.")
    return canonical


def answers_equal(a: str | None, b: str | None, answer_type: str) -> bool:
    """Whether two answers (canonical or as written) are the same answer: numbers numerically within a relative
    tolerance of 1e-6 ("1,000" == "1000.0"), labels by canonical form, DROP spans by normalized text. None equals
    nothing, not even None."""
    if a is None or b is None:
        return False
    return keys_equal(answer_key(a, answer_type), answer_key(b, answer_type), answer_type)


def display_answer(answer: Any, answer_type: str) -> str:
    """`answer` as an answer sentence writes it: "9", "(b)", "Puerto Rican" (DROP text keeps its casing; numbers
    are canonical)."""
    canonical = canonicalize(answer, answer_type)
    if canonical is None:
        raise ValueError(f"Cannot write {answer!r} as a {answer_type!r} answer.")
    return ANSWER_TYPES[answer_type].display(canonical, answer)


def answer_sentence(answer: Any, answer_type: str, prefix: str = "The answer is") -> str:
    """The sentence that states `answer` in a target or exemplar: "The answer is 9.", "The answer is (b).",
    "So the answer is Puerto Rican."."""
    return f"{prefix} {display_answer(answer, answer_type)}."
