"""Answer parsing, canonical forms and equality (lsi.tasks.answers): hand-written tables per answer type."""

import fractions

import pytest

from lsi.tasks.answers import (
    NLI_LABELS,
    answer_sentence,
    answers_equal,
    canonicalize,
    format_number,
    normalize_drop_text,
    normalize_gold,
    parse_answer,
)

NEUTRAL = "it is not possible to tell"

NUMBER_CASES = [
    # the exemplar form
    ("The answer is 6.", "6"),
    ("There are 15 trees and 21 after. 21 - 15 = 6. The answer is 6.", "6"),
    ("So the answer is 39.", "39"),
    ("the answer is 8", "8"),
    ("THE ANSWER IS 8.", "8"),
    # currency, separators, decimals
    ("The answer is $1,234.50.", "1234.5"),
    ("The answer is $0.50.", "0.5"),
    ("The answer is $.50.", "0.5"),
    ("The answer is 1,000,000.", "1000000"),
    ("The answer is 1000.00.", "1000"),
    ("The answer is 3.0.", "3"),
    ("The answer is 3.25 hours.", "3.25"),
    ("The answer is 0.125.", "0.125"),
    ("The answer is 007.", "7"),
    ("The answer is €12.", "12"),
    # signs
    ("The answer is -3.", "-3"),
    ("The answer is −3.", "-3"),
    ("The answer is -$5.", "-5"),
    ("The answer is $-5.", "-5"),
    ("The answer is -0.", "0"),
    ("The answer is -2.5 degrees.", "-2.5"),
    # fractions and percentages
    ("The answer is 1/2.", "0.5"),
    ("The answer is 3/4 of a cup.", "0.75"),
    ("The answer is 1/3.", "1/3"),
    ("The answer is 2/6.", "1/3"),
    ("The answer is -1/3.", "-1/3"),
    ("The answer is 6/3.", "2"),
    ("The answer is 1/0.", None),
    ("The answer is 25%.", "25"),
    ("The answer is 12.5 %.", "12.5"),
    # units, trailing text, scale words
    ("The answer is 18 dollars.", "18"),
    ("The answer is 21 yards", "21"),
    ("The answer is 5 apples because 2 + 3 = 5.", "5"),
    ("The answer is 18 (3 * 6).", "18"),
    ("The answer is 1.5 million.", "1500000"),
    ("The answer is 3 thousand.", "3000"),
    ("The answer is 1st.", "1"),
    # scientific notation: its value, or None when malformed, never the digits before the "e"
    ("The answer is 1e3.", "1000"),
    ("The answer is 2.5e-2.", "0.025"),
    ("The answer is 3E+2 people.", "300"),
    ("The answer is -1.5e3.", "-1500"),
    ("The answer is 6.02e23.", "602000000000000000000000"),
    ("The answer is 1e3x.", None),
    ("The answer is 3e5a.", None),
    ("The answer is 1e3.5.", None),
    ("The answer is 1e999.", None),
    ("The answer is 5e.", "5"),
    ("About 1e3 people came", "1000"),
    # number words at the start of the span
    ("The answer is five.", "5"),
    ("The answer is Twelve apples.", "12"),
    ("The answer is twenty-one.", "21"),
    ("The answer is ninety nine.", "99"),
    ("The answer is zero.", "0"),
    ("The answer is eight hundred.", None),
    ("The answer is someone.", None),
    # fillers and formatting
    ("The answer is: 42", "42"),
    ("The answer is **42**.", "42"),
    ("The answer is\n\n**18**", "18"),
    ('The answer is "7".', "7"),
    ("I think the answer is probably 12.", "12"),
    ("Therefore, the final answer is 9.", "9"),
    ("The answer would be 14.", "14"),
    ("The answer to this question is 11.", "11"),
    ("The answer is $\\boxed{18}$.", "18"),
    ("The answer is the total, 18 dollars.", "18"),
    # expressions
    ("The answer is 3 + 4 = 7.", "7"),
    ("The answer is 20 x 3 = 60 cookies.", "60"),
    ("The answer is 1/2 + 1/4 = 3/4.", "0.75"),
    ("The answer is 7 (3 + 4 = 7).", "7"),
    ("The answer is 3 + 4.", None),
    # misleading and hedged sentences give None, never the wrong number
    ("The answer is not 5, it is 6", None),
    ("The answer is definitely not 5.", None),
    ("The answer isn't 5.", None),
    ("The answer is never 5.", None),
    ("The answer is 5 or 6.", None),
    ("The answer is 5 to 6 hours.", None),
    ("The answer is unknown.", None),
    # which answer sentence
    ("The answer is 5. Q: Tom has 3 apples. How many? A: The answer is 7.", "5"),
    ("The answer is 5.\n\nQ: Tom has 3 apples.\nA: He has 3. The answer is 7.", "5"),
    ("The answer is 5.\nQuestion: What is 2 + 5?\nThe answer is 7.", "5"),
    ("The answer is the sum of 3 and 4. 3 + 4 = 7. The answer is 7.", "7"),
    ("The answer is 5. Wait, I made a mistake: the answer is 7.", "7"),
    ("The answer is 8. So the answer is 8.", "8"),
    # numbers of the question restated before the answer
    ("Q: Leah had 32 chocolates and her sister had 42.\nA: 32 + 42 = 74. 74 - 35 = 39. The answer is 39.", "39"),
    ("Olivia has $23 and buys 5 bagels for $3 each. She spends 15 and keeps 8. The answer is 8.", "8"),
    # fallbacks: an "Answer:" label, then the last number
    ("Answer: 42", "42"),
    ("Reasoning here.\nFinal answer: $1,200", "1200"),
    ("He has 3 + 4 = 7 apples.", "7"),
    ("18", "18"),
    ("He earns 18 dollars.\n\nQ: Sam has 3 cats and 4 dogs.", "18"),
    ("It costs 2 dollars each, so 6 in total", "6"),
    # nothing to read
    ("", None),
    ("   ", None),
    ("I don't know.", None),
    ("No numbers at all here", None),
]


@pytest.mark.parametrize("text, expected", NUMBER_CASES)
def test_parse_number(text, expected):
    assert parse_answer(text, "number") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("He has 3 + 4 = 7 apples.", None),
        ("Answer: 42", None),
        ("18", None),
        ("The answer is 18.", "18"),
        ("So the answer is 18 dollars.", "18"),
    ],
)
def test_parse_number_strict_reads_only_answer_sentences(text, expected):
    assert parse_answer(text, "number", strict=True) == expected


OPTION_CASES = [
    ("The answer is (b).", "b"),
    ("The answer is (B).", "b"),
    ("The answer is B.", "b"),
    ("The answer is b.", "b"),
    ("The answer is b).", "b"),
    ("The answer is B) boiling.", "b"),
    ("The answer is [d].", "d"),
    ("The answer is ( c ).", "c"),
    ("The answer is (B) 12 apples", "b"),
    ("The answer is option c", "c"),
    ("The answer is Option (C).", "c"),
    ("The answer is choice d.", "d"),
    ("The answer is (c) because the sun makes plants grow.", "c"),
    ("The answer is B because it conducts heat.", "b"),
    ("I think the answer is probably (c).", "c"),
    ("The correct answer is: (e)", "e"),
    ("The answer is **(a)**.", "a"),
    ("The answer is a.", "a"),
    ("The answer is (a) poison.", "a"),
    ("Dry palms make friction. The answer is (a).", "a"),
    # misleading, hedged, out of range
    ("The answer is a dog.", None),
    ("The answer is (f).", None),
    ("The answer is (b) or (c).", None),
    ("The answer is not (b).", None),
    ("The answer is not (b), it is (c).", None),
    ("The answer is the third one.", None),
    ("The answer is (c). Q: Which is a metal? (a) wood (b) iron\nA: The answer is (b).", "c"),
    # fallbacks
    ("B", "b"),
    ("(b)", "b"),
    ("b) 12 apples", "b"),
    ("(B) 12 apples", "b"),
    ("Answer: (d)", "d"),
    ("(a) is wrong because it is alive. (c) fits best.", "c"),
    ("Boiling is (a), melting is (b); ice forms by freezing, (c).", "c"),
    ("Plants need the sun.", None),
    ("", None),
]


@pytest.mark.parametrize("text, expected", OPTION_CASES)
def test_parse_option(text, expected):
    assert parse_answer(text, "option") == expected


@pytest.mark.parametrize(
    "text, num_options, expected",
    [
        ("The answer is (e).", 5, "e"),
        ("The answer is (e).", 4, None),
        ("The answer is (d).", 4, "d"),
        ("(e) 50 km", 4, None),
        ("(b) or maybe (e)", 4, "b"),
    ],
)
def test_parse_option_limits_letters(text, num_options, expected):
    assert parse_answer(text, "option", num_options=num_options) == expected


NLI_CASES = [
    ("The answer is yes.", "yes"),
    ("The answer is Yes.", "yes"),
    ("The answer is no.", "no"),
    ("The answer is it is not possible to tell.", NEUTRAL),
    ("The answer is it's not possible to tell.", NEUTRAL),
    ("The answer is it’s not possible to tell.", NEUTRAL),
    ("The answer is not possible to tell.", NEUTRAL),
    ("The answer is impossible to tell.", NEUTRAL),
    ("The answer is we cannot tell.", NEUTRAL),
    ("The answer is can't tell.", NEUTRAL),
    ("The answer is it cannot be determined.", NEUTRAL),
    ("The answer is neutral.", NEUTRAL),
    ("The answer is entailment.", "yes"),
    ("The answer is contradiction.", "no"),
    ("The answer is true.", "yes"),
    ('The answer is "no".', "no"),
    ("The premise says the cream is skimmed but not by whom. The answer is it is not possible to tell.", NEUTRAL),
    ("The answer is maybe.", None),
    ("The answer is not yes.", None),
    ("The answer is yes or no.", None),
    ("The answer is no one knows.", None),
    ("The answer is unclear.", None),
    ("The answer is no.\n\nPremise:\n\"A man sleeps.\"\nThe answer is yes.", "no"),
    # fallbacks
    ("Yes.", "yes"),
    ("No, because the premise says otherwise.", "no"),
    ("It is not possible to tell from the premise.", NEUTRAL),
    ("Answer: no", "no"),
    ("No one was there.", None),
    ("The premise is about a dog.", None),
]


@pytest.mark.parametrize("text, expected", NLI_CASES)
def test_parse_nli(text, expected):
    assert parse_answer(text, "nli") == expected


YES_NO_CASES = [
    ("The answer is yes.", "yes"),
    ("So the answer is no.", "no"),
    ("The answer is Yes, since hamsters are prey.", "yes"),
    ("The answer is no, because pears float.", "no"),
    ("The answer is true.", "yes"),
    ("The answer is False.", "no"),
    ("The answer is: **No**", "no"),
    ("The answer is not yes.", None),
    ("The answer is no longer relevant.", None),
    ("The answer is maybe.", None),
    ("The answer is yes or no.", None),
    ("Yes.", "yes"),
    ("no", "no"),
    ("No, a llama cannot give birth twice in that time.", "no"),
    ("Nobody knows.", None),
    ("No one knows.", None),
]


@pytest.mark.parametrize("text, expected", YES_NO_CASES)
def test_parse_yes_no(text, expected):
    assert parse_answer(text, "yes_no") == expected


DROP_CASES = [
    ("According to the passage, 9 + 12 = 21. So the answer is 21 yards.", "21"),
    ("So the answer is 10 points.", "10"),
    ("So the answer is 2.", "2"),
    ("So the answer is 14.8%.", "14.8"),
    ("So the answer is 1958 - 1951 = 7.", "7"),
    ("So the answer is 23.5 - 8.7 = 14.8.", "14.8"),
    ("So the answer is 34-yard.", "34"),
    ("So the answer is 1,000 people.", "1000"),
    ("So the answer is 1e3 people.", "1000"),
    ("So the answer is two.", "2"),
    ("So the answer is Puerto Rican and Dominican.", "puerto rican and dominican"),
    ("So the answer is the Ravens.", "ravens"),
    ("So the answer is John Kasay.", "john kasay"),
    ("So the answer is the U.S. Army.", "us army"),
    ("So the answer is 2018 and 2016.", "2018 and 2016"),
    ("So the answer is 45 to 64.", "45 to 64"),
    ("So the answer is not 5, it is 6.", None),
    ("So the answer is 3 + 4.", None),
    ("So the answer is 7. Q: How many yards? A: So the answer is 9.", "7"),
    # fallbacks: a short whole answer, else the last number
    ("21 yards", "21"),
    ("Agriculture", "agriculture"),
    ("The Ravens scored 10 points in the first half and then 7 more.\nThey lost.", "7"),
    ("", None),
]


@pytest.mark.parametrize("text, expected", DROP_CASES)
def test_parse_drop(text, expected):
    assert parse_answer(text, "drop") == expected


@pytest.mark.parametrize(
    "answer, answer_type, expected",
    [
        ("1,234", "number", "1234"),
        ("#### 1,234", "number", "1234"),
        ("72", "number", "72"),
        (51.0, "number", "51"),
        (7, "number", "7"),
        (0.1, "number", "0.1"),
        ("-3", "number", "-3"),
        ("$18.00", "number", "18"),
        ("3/4", "number", "0.75"),
        ("1e3", "number", "1000"),
        (1e-7, "number", "0.0000001"),
        ("C", "option", "c"),
        ("(c)", "option", "c"),
        ("c)", "option", "c"),
        ("3", "option", "c"),
        ("entailment", "nli", "yes"),
        ("neutral", "nli", NEUTRAL),
        ("contradiction", "nli", "no"),
        ("e", "nli", "yes"),
        ("n", "nli", NEUTRAL),
        ("c", "nli", "no"),
        ("It is not possible to tell", "nli", NEUTRAL),
        (True, "yes_no", "yes"),
        (False, "yes_no", "no"),
        ("Yes", "yes_no", "yes"),
        ("false", "yes_no", "no"),
        ("not_entailment", "yes_no", "no"),
        ("Yes. Hamsters are prey animals.", "yes_no", "yes"),
        ("No. The density of a pear is 0.59 g/cm^3.", "yes_no", "no"),
        ("34-yard", "drop", "34"),
        ("70.09", "drop", "70.09"),
        (" Puerto Rican and Dominican", "drop", "puerto rican and dominican"),
        ("two or more races", "drop", "two or more races"),
        ("never rotated there", "drop", "never rotated there"),
        ("24-19", "drop", "24 19"),
        ("1426-1440", "drop", "1426 1440"),
        ("2015/16", "drop", "201516"),
        ("4 July", "drop", "4 july"),
        ("5 mayors", "drop", "5"),
        ("9th Cavalry Regiment", "drop", "9th cavalry regiment"),
        ("1990s", "drop", "1990s"),
        ("Thirteen Years War", "drop", "thirteen years war"),
        ("five days", "drop", "5"),
        ("85 percent", "drop", "85"),
        ("-.7", "drop", "-0.7"),
        ("1,962,059", "drop", "1962059"),
    ],
)
def test_normalize_gold(answer, answer_type, expected):
    assert normalize_gold(answer, answer_type) == expected


@pytest.mark.parametrize(
    "answer, answer_type",
    [("", "number"), ("twelve apples and 3 pears", "number"), ("1 to 2", "number"), ("banana", "option"),
     ("perhaps", "nli"), ("perhaps", "yes_no"), (None, "number"), (float("nan"), "number"), (True, "number")],
)
def test_normalize_gold_rejects_unreadable(answer, answer_type):
    with pytest.raises(ValueError, match="Cannot read gold answer"):
        normalize_gold(answer, answer_type)


def test_unknown_answer_type_is_an_error():
    with pytest.raises(ValueError, match="answer_type"):
        parse_answer("The answer is 5.", "integer")
    with pytest.raises(ValueError, match="num_options"):
        parse_answer("The answer is (a).", "option", num_options=0)


@pytest.mark.parametrize(
    "a, b, answer_type, expected",
    [
        ("1,000", "1000.0", "number", True),
        ("1000", "1000", "number", True),
        ("0.5", "1/2", "number", True),
        ("1/3", "0.3333333", "number", True),
        ("1/3", "0.33", "number", False),
        ("1000000", "1000000.5", "number", True),
        ("1e3", "1,000", "number", True),
        ("1000000", "1000002", "number", False),
        ("0", "0", "number", True),
        ("0", "0.0000001", "number", False),
        ("-3", "3", "number", False),
        ("$5", "5", "number", True),
        ("5", None, "number", False),
        (None, None, "number", False),
        ("b", "B", "option", True),
        ("(b)", "b", "option", True),
        ("b", "c", "option", False),
        ("yes", "entailment", "nli", True),
        (NEUTRAL, "neutral", "nli", True),
        ("no", "yes", "nli", False),
        ("yes", "True", "yes_no", True),
        ("21", "21 yards", "drop", True),
        ("21.0", "21", "drop", True),
        ("the Ravens", "ravens", "drop", True),
        ("ravens", "steelers", "drop", False),
        ("21", "ravens", "drop", False),
    ],
)
def test_answers_equal(a, b, answer_type, expected):
    assert answers_equal(a, b, answer_type) is expected
    assert answers_equal(b, a, answer_type) is expected


@pytest.mark.parametrize(
    "answer, answer_type, prefix, expected",
    [
        ("9", "number", "The answer is", "The answer is 9."),
        ("1,000.50", "number", "The answer is", "The answer is 1000.5."),
        ("1/3", "number", "The answer is", "The answer is 1/3."),
        ("b", "option", "The answer is", "The answer is (b)."),
        ("B", "option", "The answer is", "The answer is (b)."),
        ("it is not possible to tell", "nli", "The answer is", "The answer is it is not possible to tell."),
        ("neutral", "nli", "The answer is", "The answer is it is not possible to tell."),
        (True, "yes_no", "The answer is", "The answer is yes."),
        ("21 yards", "drop", "So the answer is", "So the answer is 21."),
        ("Puerto Rican and Dominican", "drop", "So the answer is", "So the answer is Puerto Rican and Dominican."),
    ],
)
def test_answer_sentence(answer, answer_type, prefix, expected):
    assert answer_sentence(answer, answer_type, prefix=prefix) == expected


@pytest.mark.parametrize(
    "answer, answer_type",
    [("6", "number"), ("-2.5", "number"), ("1/3", "number"), ("1234.5", "number"), ("a", "option"),
     ("e", "option"), *((label, "nli") for label in NLI_LABELS), ("yes", "yes_no"), ("no", "yes_no"),
     ("21", "drop"), ("puerto rican and dominican", "drop"), ("us army", "drop")],
)
def test_answer_sentence_round_trips(answer, answer_type):
    sentence = answer_sentence(answer, answer_type)
    assert parse_answer(sentence, answer_type, strict=True) == canonicalize(answer, answer_type)
    # The same sentence inside a chain of thought followed by an invented next question.
    invented = f"Q: Another question with 99?\nA: {answer_sentence('c', 'option')}"
    text = f"Some reasoning with 3 and 4. {sentence}\n\n{invented}"
    assert parse_answer(text, answer_type) == canonicalize(answer, answer_type)


@pytest.mark.parametrize(
    "value, expected",
    [(fractions.Fraction(1000), "1000"), (fractions.Fraction(-3), "-3"), (fractions.Fraction(1, 2), "0.5"),
     (fractions.Fraction(1, 3), "1/3"), (fractions.Fraction(2469, 2), "1234.5"), (fractions.Fraction(0), "0"),
     (fractions.Fraction(1, 2**20), "0.00000095367431640625"), (fractions.Fraction(10**30), "1" + "0" * 30)],
)
def test_format_number(value, expected):
    assert format_number(value) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("The Ravens", "ravens"), ("34-yard", "34 yard"), ("U.S. Army", "us army"), ("1,000 people", "1000 people"),
     ("  an  apple, the pear ", "apple pear"), ("3.0", "3"), ("14.8%", "14.8"), ("", "")],
)
def test_normalize_drop_text(text, expected):
    assert normalize_drop_text(text) == expected
