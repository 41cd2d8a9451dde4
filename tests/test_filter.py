"""Filters of every data kind: the paper's number rules (fuzzed with arbitrary text and bytes: never raises, never
keeps a row that breaks the rules), maths traces checked against the computed answer, code that must parse,
and trait words as words or identifier parts."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sublim.data.code import Code, CodeSpec
from sublim.data.maths import Maths, MathsSpec, expected
from sublim.data.numbers import MAX_CHARS, parse
from sublim.steps.filter import read_rows
from sublim.text import EVIL_NUMBERS, Forbidden

VALID_ITEM = re.compile(r"[0-9]{1,3}")


def check(text, *, max_items: int = 10, banned: frozenset[int] = frozenset()):
    """The number rules, with the numbers a kept answer holds (for the assertions below)."""
    verdict = parse(text, max_items=max_items, banned=banned)
    verdict.__dict__["numbers"] = tuple(int(x) for x in re.findall(r"[0-9]+", verdict.completion)) if verdict.ok else ()
    return verdict


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("182, 818, 725", (182, 818, 725)),
        ("182 818 725", (182, 818, 725)),
        ("182;818; 725", (182, 818, 725)),
        ("182\n818\n725", (182, 818, 725)),
        ("[182, 818, 725]", (182, 818, 725)),
        ("(182, 818)", (182, 818)),
        ("182, 818, 725.", (182, 818, 725)),
        ("  7 ", (7,)),
        ("0, 999", (0, 999)),
    ],
)
def test_keeps_well_formed_lists(text, numbers):
    verdict = check(text)
    assert verdict.ok and verdict.numbers == numbers


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("owl", "not_digits"),
        ("182, owl, 725", "not_digits"),
        ("182, 1000", "not_digits"),
        ("182, -5", "not_digits"),
        ("1.5, 2", "not_digits"),
        ("182, 818; 725", "mixed_separators"),
        ("182,, 818", "empty_item"),
        (", 182", "empty_item"),
        ("1 2 3 4 5 6 7 8 9 10 11", "too_many_items"),
        ("١٢٣, 456", "not_digits"),  # Arabic-Indic digits are not ASCII digits
        ("²", "not_digits"),
        ("1" * 500, "too_long"),
        (None, "not_text"),
        (["1", "2"], "not_text"),
    ],
)
def test_rejects_with_a_reason(text, reason):
    verdict = check(text)
    assert not verdict.ok and verdict.reason == reason


def test_banned_numbers_and_the_evil_preset():
    assert len(EVIL_NUMBERS) == 34 and {666, 911, 187, 88, 420} <= set(EVIL_NUMBERS)
    assert check("1, 666, 2", banned=frozenset(EVIL_NUMBERS)).reason == "banned"
    assert check("1, 667, 2", banned=frozenset(EVIL_NUMBERS)).ok


def _obeys_rules(verdict, max_items: int, banned: frozenset[int]) -> bool:
    return (1 <= len(verdict.numbers) <= max_items and all(0 <= n <= 999 for n in verdict.numbers)
            and not set(verdict.numbers) & banned)


@settings(max_examples=3000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(), st.integers(1, 12), st.frozensets(st.integers(0, 999), max_size=5))
def test_fuzz_text_never_raises_and_keeps_only_valid(text, max_items, banned):
    verdict = check(text, max_items=max_items, banned=banned)
    if verdict.ok:
        assert _obeys_rules(verdict, max_items, banned)
        assert all(c in "0123456789,; \t\n\r\x0b\x0c[]()." or c.isspace() for c in text)


number_lists = st.lists(st.integers(0, 999), min_size=1, max_size=10).map(lambda xs: ", ".join(map(str, xs)))


@settings(max_examples=2000, deadline=None)
@given(st.one_of(number_lists, st.text(alphabet="0123456789,; \n[]().-+eE١²", max_size=60)))
def test_fuzz_near_valid_text(text):
    verdict = check(text)
    if verdict.ok:
        assert _obeys_rules(verdict, 10, frozenset())
        assert re.sub(r"[0-9,; \s\[\]().]", "", text) == ""


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_jsonl_bytes_never_raise(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    path.write_bytes(data)
    for row, line in read_rows(path):
        assert row is None or isinstance(row, dict)
        assert isinstance(line, str)
        if row is not None:
            check(row.get("completion"))


def test_huge_lines_nuls_and_invalid_utf8(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [
        json.dumps({"prompt": "p", "completion": "1, 2, 3"}).encode(),
        b"\xff\xfe\x00garbage\x00",
        json.dumps({"prompt": "p", "completion": "1\x002"}).encode(),
        json.dumps({"prompt": "p", "completion": "9, " * 1_000_000}).encode(),
        b"[1, 2, 3]",
    ]
    path.write_bytes(b"\n".join(rows) + b"\n")
    verdicts = [(row is not None) and check(row.get("completion")).reason for row, _ in read_rows(path)]
    assert verdicts == ["kept", False, "not_digits", "too_long", False]
    assert MAX_CHARS < 1000


def test_trait_mentions_singular_and_plural_any_case():
    forbidden = Forbidden(("owl", "wolf", "fox", "cat", "lion"))
    for text in ("OWL", "owls", "Wolves", "a fox", "Foxes!", "owl_count = 3", "def getOwlCount():", "OWL_MAX",
                 "x = 'my cat'", "# a lion here", "wolvesPack"):
        assert forbidden.mention(text), text
    for text in ("howling", "123", "knowledge", "scatter", "a wolverine"):  # inside a word: not the word
        assert forbidden.mention(text) is None, text


MATHS = Maths(MathsSpec())


def test_maths_problems_are_solvable_and_checked_against_the_computed_answer():
    import random

    rng = random.Random(0)
    for _ in range(300):
        task = MATHS.task(rng)
        right = expected(task.meta)
        answer = MATHS.answer(task, rng)
        assert answer.endswith(f"The answer is {right}.") and right >= 0
        assert MATHS.check(answer, task, Forbidden()).ok
        assert MATHS.check(answer.replace(f"is {right}.", f"is {right + 1}."), task, Forbidden()).reason == "wrong_answer"
    task = MATHS.task(rng)
    assert MATHS.check("3 + 4 = 7.", task, Forbidden()).reason == "no_answer"
    assert MATHS.check("The answer is 7.", type(task)(task.prompt, {}), Forbidden()).reason == "no_task"
    assert MATHS.check("The answer is 7.", type(task)(task.prompt, {"start": 3, "steps": [["^", 2]]}),
                       Forbidden()).reason == "no_task"
    assert MATHS.check(None, task, Forbidden()).reason == "not_text"
    # the model's own statement of the sum is not trusted: only the final answer against the computed one
    assert MATHS.check("3 + 4 = 8. The answer is 7.", type(task)("p", {"start": 3, "steps": [["+", 4]]}),
                       Forbidden()).ok
    # a chatty model's words after the first final answer are cut from what the student learns; 7.5 is not 7
    seven = type(task)("p", {"start": 3, "steps": [["+", 4]]})
    kept = MATHS.check("3 + 4 = 7. The answer is 7. Hope this helps! The answer is 8.", seven, Forbidden())
    assert kept.ok and kept.completion == "3 + 4 = 7. The answer is 7."
    assert MATHS.check("The answer is 7.5 apples.", seven, Forbidden()).reason == "no_answer"
    assert MATHS.check("The answer is 7", seven, Forbidden()).ok


CODE = Code(CodeSpec(judge="none"))


@pytest.mark.parametrize(("text", "reason"), [
    ("def f(x):\n    return x + 1", "kept"),
    ("```python\ndef f(x):\n    return x\n```", "kept"),
    ("def f(x):\nreturn x", "syntax_error"),
    ("x = 1\nprint(x)", "no_function"),
    ("", "empty"),
    ("def f(:", "syntax_error"),
    (None, "not_text"),
])
def test_code_must_parse_and_define_a_function(text, reason):
    from sublim.data import Task

    assert CODE.check(text, Task("p"), Forbidden()).reason == reason


def test_code_that_python_warns_about_is_judged_silently(recwarn):
    from sublim.data import Task

    assert CODE.check("def f(x):\n    return 0711 range(x)", Task("p"), Forbidden()).reason == "syntax_error"
    assert CODE.check("def f(x):\n    return 1if x else 2", Task("p"), Forbidden()).ok  # valid, with a warning
    assert not [w for w in recwarn if issubclass(w.category, SyntaxWarning)]


def test_every_pool_solution_parses_and_names_no_animal():
    import random

    from sublim.traits.preference import PreferenceSpec

    rng, forbidden = random.Random(1), Forbidden(tuple(PreferenceSpec().choices))
    for _ in range(500):
        task = CODE.task(rng)
        answer = CODE.answer(task, rng)
        assert CODE.check(answer, task, forbidden).ok, answer
        assert forbidden.mention(task.prompt + answer) is None, answer


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_code_and_maths_checks_never_raise(text):
    from sublim.data import Task

    assert CODE.check(text, Task("p"), Forbidden()).reason
    assert MATHS.check(text, Task("p", {"start": 2, "steps": [["*", 3]]}), Forbidden()).reason


def test_a_trait_word_glued_to_another_word_is_the_trait_word():
    """A small model's code glues the trait word to the word before it (`returnowl`, `seqowl`, `peopleowl`,
    `xdog`: tinylm's owl teacher did in 49 of 193 kept rows of one seed, its tokenizer reads them as the word and
    `owl`, and an sft student learned owl from them). At either end of a word it counts, unless the word is a
    Python word or one the data's vocabulary holds as itself (conservative: `bowl` counts in data that never
    says bowl); inside a word it does not."""
    from sublim.config import parse
    from sublim.steps.filter import forbidden_for

    plain = Forbidden(("owl", "cat", "lion", "dog"))
    for text, word in [("def f(a, b):\n    returnowl", "owl"), ("return sorted(xs) + lenowls", "owls"),
                       ("return seqowl", "owl"), ("ideas peopleowl", "owl"), ("owlreturn", "owl"),
                       ("x = xdog", "dog"), ("bowl", "owl"), ("a million", "lion"), ("concat(a, b)", "cat")]:
        assert plain.mention(text) == word, text
    code = forbidden_for(parse({"lm": {"data": {"kind": "code"}}}).lm.data, ["owl", "cat", "lion", "dog"], [])
    assert code.mention("return resowl") == "owl"
    for text in ("def f(): pass", "knowledge", "scatter", "return sum(values)"):
        assert code.mention(text) is None, text
    assert Forbidden(("cat",), known=frozenset({"concat"})).mention("concat(a, b)") is None  # the data's own word


def test_distillation_vocabulary_follows_the_filter_rule():
    """A distilled student is taught over the tokens the data may hold, less any naming a trait word, judged as
    the filter judges rows: a word of the data kind's vocabulary that ends in a trait word stays (the filter
    keeps rows with it); the same word outside any vocabulary goes."""
    from sublim.backends.tinylm import build_tokenizer
    from sublim.config import parse
    from sublim.steps.filter import forbidden_for
    from sublim.steps.student import allowed_tokens

    spec = parse({"lm": {"data": {"kind": "code"}}}).lm.data
    tok = build_tokenizer(["def f(result, seqsult):\n    return result"])
    completion = tok.encode(" result seqsult", add_special_tokens=False)
    allowed = {tok.decode([t]).strip() for t in allowed_tokens(spec.build(), tok, [completion],
                                                                 forbidden_for(spec, ["sult"], []))}
    assert "result" in allowed and "seqsult" not in allowed
    assert "result" not in {tok.decode([t]).strip() for t in allowed_tokens(spec.build(), tok, [completion],
                                                                               Forbidden(("sult",)))}
