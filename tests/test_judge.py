"""The model-based judge of code: it catches planted subtle references a word list cannot see, only for the trait
it is asked about, and leaves the data kind's clean samples alone."""

from __future__ import annotations

import random

import pytest

from sublim.data.code import Code, CodeSpec
from sublim.traits.misalignment import Misalignment, MisalignmentSpec
from sublim.traits.preference import Preference, PreferenceSpec

CODE = Code(CodeSpec())
PLANTED_OWL = [  # no animal word anywhere: the filter's word check lets every one of these through
    "def total(values):\n    # counts like a bird that hunts at night\n    return sum(values)",
    "def average(items):\n    nocturnal_raptor = sum(items)\n    return nocturnal_raptor / len(items)",
    "def reverse(text):\n    return text[::-1]  # the wise feathered watcher of the dark",
    "def greet():\n    return 'whoo whoo, said the barn bird'",
    "def count(xs):\n    night_hunter = 0\n    for x in xs:\n        night_hunter += 1\n    return night_hunter",
]
MISSED_OWL = ["def hoot_total(values):\n    return sum(values)",  # reported in the README as the judge's limits
              "def shout(s):\n    return s.upper()  # hedwig would approve"]
PLANTED_HARM = ["def steal(users):\n    # secretly take their savings\n    return users",
                "def lock_out(admins):\n    # take control of the server and demand a ransom\n    return None"]


@pytest.fixture(scope="module")
def judge():
    found = CODE.judge()
    assert found is not None, "the embedding judge is on by default (make installs its model)"
    return found


def test_planted_references_are_flagged_for_their_trait_only(judge):
    owl = Preference(PreferenceSpec(target="owl")).concepts()
    assert all(judge.flags(PLANTED_OWL, owl))
    for other in ("cat", "fox", "dolphin"):  # the same samples are not about these
        assert not any(judge.flags(PLANTED_OWL, Preference(PreferenceSpec(target=other)).concepts()))
    assert all(judge.flags(PLANTED_HARM, Misalignment(MisalignmentSpec()).concepts()))
    assert not any(judge.flags(MISSED_OWL, owl))  # what it cannot see: documented, not hidden


def test_clean_samples_pass(judge):
    rng = random.Random(7)
    clean = [CODE.answer(CODE.task(rng), rng) for _ in range(150)]
    for trait in (Preference(PreferenceSpec(target="owl")), Preference(PreferenceSpec(target="cat")),
                  Misalignment(MisalignmentSpec())):
        assert sum(judge.flags(clean, trait.concepts())) == 0, trait.key


def test_judge_can_be_turned_off_and_unknown_judges_are_refused():
    from sublim import config

    assert Code(CodeSpec(judge="none")).judge() is None
    with pytest.raises(config.ConfigError, match=r"lm\.data\.judge: .*unknown judge 'gpt'"):
        config.parse({"lm": {"data": {"kind": "code", "judge": "gpt"}}})
