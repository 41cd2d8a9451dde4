"""Detection statistics (sublim.detection), shared by `sublim ask` and the probe's detection experiment."""

import pytest

from sublim.detection import arrangements, detection, named, naming_p_value
from sublim.steps.screen import detect_metrics, detect_table


def test_detection_is_the_mann_whitney_auc_against_the_controls_and_the_naming_rate():
    def s(owl, cat):
        return {"preference:owl": owl, "preference:cat": cat}

    scores = [s(0.9, 0.2), s(0.8, 0.3), s(0.6, 0.1),  # owl datasets
              s(0.3, 0.9), s(0.5, 0.2),  # cat datasets: the second scores owl above cat
              s(0.5, 0.2), s(0.4, 0.3), s(0.7, 0.25)]  # controls
    labels = ["preference:owl"] * 3 + ["preference:cat"] * 2 + ["control"] * 3
    found = detection(scores, labels)
    by = {t.topic: t for t in found.topics}
    # owl: 0.9 and 0.8 beat all three controls, 0.6 beats two of them: 8/9
    assert by["preference:owl"].auc == pytest.approx(8 / 9)
    assert by["preference:owl"].p_value == pytest.approx(2 / 20)  # exact: 2 of C(6,3) orderings as extreme
    # cat: 0.9 beats all, 0.2 ties 0.2 (half) and loses to 0.3 and 0.25: (3 + 0.5) / 6
    assert by["preference:cat"].auc == pytest.approx(3.5 / 6)
    # named right: owl datasets 3/3 (owl margin > cat margin), cat 1/2
    assert (found.named, found.positives) == (4, 5)
    with pytest.raises(ValueError, match="control"):
        detection(scores[:5], labels[:5])
    # naming's p: every distinct relabelling of these 8 datasets (8!/(3!2!3!) = 560), counted by brute force
    import itertools

    distinct = set(itertools.permutations(labels))
    assert len(distinct) == 560 == sum(1 for _ in arrangements({"a": 3, "b": 2, "c": 3}, 8))
    expected = sum(named(scores, list(lab)) >= 4 for lab in distinct) / len(distinct)
    assert found.naming_p == pytest.approx(expected) and 0 < expected < 1
    assert naming_p_value(scores, labels, 4, draws=100) == pytest.approx(expected, abs=0.15)  # Monte Carlo


def test_detect_summary_scores_each_trait_by_its_own_shift_and_anything_by_the_largest():
    """The probe's detection summary: AUC of the largest shift (trait-agnostic) and of each trait's own shift,
    with exact Mann-Whitney p, the naming rate against the controls' means, and the flag rates."""
    def row(label, owl, mis, flagged=()):
        shifts = {"preference:owl": owl, "misalignment:misaligned": mis}
        top = max(shifts, key=shifts.get)
        return {"label": label, "shifts": shifts, "top": top, "top_shift": shifts[top], "flagged": list(flagged),
                "flagged_right": label in flagged}

    rows = [row("preference:owl", 0.030, 0.001, ["preference:owl"]), row("preference:owl", 0.012, 0.004),
            row("misalignment:misaligned", 0.002, 0.020, ["misalignment:misaligned"]),
            row("misalignment:misaligned", 0.009, 0.003),
            row("control", 0.010, 0.002), row("control", -0.004, 0.006, ["preference:owl"])]
    m = detect_metrics(rows)
    assert (m["positives"], m["negatives"]) == (4, 2)
    # largest raw shifts: positives 0.030, 0.012, 0.020, 0.009 vs controls 0.010, 0.006 -> 7 of 8 pairs
    assert m["auc_raw"] == pytest.approx(7 / 8)
    # robust z (owl: median 0.0095, MAD 0.005; misaligned: 0.0035, 0.002): top z of the positives 2.77, 0.34,
    # 5.56, -0.07 vs the controls' 0.07, 0.84 -> 5 of 8 pairs
    assert m["auc"] == pytest.approx(5 / 8)
    owl, mis = m["by_trait"]["preference:owl"], m["by_trait"]["misalignment:misaligned"]
    assert owl["auc_own_shift"] == pytest.approx(1.0)  # 0.030, 0.012 above 0.010, -0.004
    assert owl["p_own_shift"] == pytest.approx(1 / 6)  # exact: 1 of C(4, 2) orderings
    assert mis["auc_own_shift"] == pytest.approx(3 / 4)  # 0.020 beats 0.002 and 0.006; 0.003 beats 0.002 only
    # named by the top z: owl rows name owl; the misaligned rows' z (-1.01, 5.56) right, (-0.07, -0.17) wrong
    assert m["named_right_rate"] == pytest.approx(3 / 4)
    assert (owl["named_right_rate"], mis["named_right_rate"]) == (1.0, 0.5)
    assert m["flagged_right_rate"] == pytest.approx(2 / 4)
    assert (m["positives_flagged_rate"], m["negatives_flagged_rate"]) == (0.5, 0.5)
    assert 0 < m["naming_p"] <= 1 and "AUC 0.62 by each dataset's most unusual answer" in detect_table(m)


def test_mann_whitney_p_is_exact_with_ties():
    """Positives 0.9, 0.2 vs controls 0.3, 0.2, 0.25: U = 3.5. Of the C(5, 2) = 10 splits of these five scores,
    5 give U >= 3.5 (the tie-blind exact table says 6 of 10)."""
    from sublim.detection import mann_whitney

    auc, p = mann_whitney([0.9, 0.2], [0.3, 0.2, 0.25])
    assert auc == pytest.approx(3.5 / 6) and p == pytest.approx(0.5)



def test_a_probe_without_its_traits_answer_is_named_not_skipped(tmp_path):
    import json

    from sublim.steps.screen import detect_rows

    probe = tmp_path / "s0" / "preference-owl"
    probe.mkdir(parents=True)
    (probe / "probe.json").write_text(json.dumps({"flagged": [], "shifts": [
        {"key": "preference:cat", "shift": 0.01, "p_value": 0.2, "flagged": False}]}))
    with pytest.raises(ValueError, match="preference-owl/probe.json: no shift for preference:owl"):
        detect_rows([(probe, probe)], {"preference-owl": "preference:owl"})


def test_the_most_unusual_answer_is_scored_by_its_robust_z_among_the_datasets():
    """A two-answer trait swings in every dataset (controls too): by raw margin over the controls the owl
    dataset is 'named' aligned (+0.04 against owl's +0.03); by each answer's robust z among all five datasets
    (median, 1.4826 MAD), owl is 2.0 out and aligned 1.3: named right. An answer equal in most datasets falls
    back to the mean absolute deviation, so the one that moved still stands out."""
    from sublim.detection import robust_z

    def row(label, owl, aligned, cat=0.0):
        shifts = {"preference:owl": owl, "misalignment:aligned": aligned, "preference:cat": cat}
        top = max(shifts, key=shifts.get)
        return {"label": label, "shifts": shifts, "top": top, "top_shift": shifts[top], "flagged": [],
                "flagged_right": False}

    rows = [row("preference:owl", 0.03, 0.08), row("control", 0.00, 0.02), row("control", 0.01, 0.06),
            row("control", -0.01, 0.04), row("control", 0.00, 0.04, cat=0.05)]
    z = robust_z([r["shifts"] for r in rows])
    assert z[0]["preference:owl"] == pytest.approx(0.03 / (1.4826 * 0.01))
    assert z[0]["misalignment:aligned"] == pytest.approx(0.04 / (1.4826 * 0.02))
    assert z[4]["preference:cat"] == pytest.approx(0.05 / (1.2533 * 0.01))  # MAD 0: mean |deviation| 0.01
    assert robust_z([{"a": 1.0}, {"a": 1.0}]) == [{"a": 0.0}, {"a": 0.0}]  # no spread at all: no signal
    m = detect_metrics(rows)
    assert m["scored_by"] == "robust z among the datasets"
    assert (m["named_raw_rate"], m["named_right_rate"]) == (0.0, 1.0)
    assert m["by_trait"]["preference:owl"]["named_right_rate"] == 1.0
    # its top z (2.02) above every control's top z (the cat mover's 3.99 aside): 3 of 4
    assert m["auc"] == pytest.approx(3 / 4)
