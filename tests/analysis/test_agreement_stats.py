"""Agreement statistics: per-run differences against a reference, and Pearson r / ICC(2,1) across
subjects, checked against values computed by hand (support.by_hand)."""

import pytest
from support.by_hand import icc21_by_hand, r_by_hand

from mlflow_wattsup.analysis.agreement_stats import (
    MIN_SUBJECTS,
    anova_two_way,
    compare,
    cross_subject,
    icc_2_1,
    pearson_r,
)

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges; they report ICC(2,1) = 0.29
SHROUT_FLEISS = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]


def test_icc_2_1_matches_the_published_example_and_the_hand_anova():
    assert icc_2_1(SHROUT_FLEISS) == pytest.approx(0.29, abs=0.005)
    assert icc_2_1(SHROUT_FLEISS) == pytest.approx(icc21_by_hand(SHROUT_FLEISS), rel=1e-12)
    a = anova_two_way(SHROUT_FLEISS)
    # the paper's mean squares: BMS 11.24, JMS 32.49, EMS 1.02
    assert (a.ms_rows, a.ms_cols, a.ms_error) == pytest.approx((11.24, 32.49, 1.02), abs=0.005)


def test_icc_drops_with_an_offset_that_r_ignores():
    x = [2.1, 2.5, 2.9, 2.4, 3.0]
    y = [v + 0.3 for v in x]
    assert pearson_r(x, y) == pytest.approx(1.0)
    rows = [[a, b] for a, b in zip(x, y, strict=True)]
    assert icc_2_1(rows) == pytest.approx(icc21_by_hand(rows)) and icc_2_1(rows) < 0.8
    assert icc_2_1([[a, a] for a in x]) == pytest.approx(1.0)


def test_undefined_below_three_subjects_or_without_spread():
    assert MIN_SUBJECTS == 3
    assert pearson_r([1.0, 2.0], [1.0, 3.0]) is None and icc_2_1([[1, 2], [3, 4]]) is None
    assert pearson_r([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
    assert icc_2_1([[2.0, 2.0]] * 4) is None
    with pytest.raises(ValueError, match="equal-length"):
        pearson_r([1, 2, 3], [1, 2])


def test_compare_pairs_by_name_and_says_what_is_unmatched():
    c = compare({"A": 10.0, "B": 5.0, "C": 0.0, "X": 1.0}, {"A": 8.0, "B": 5.0, "C": 0.0, "Y": 2.0}, "volume")
    assert [(p.name, p.diff) for p in c.compared] == [("A", 2.0), ("B", 0.0)]
    assert c.only_run == ["X"] and c.only_reference == ["Y"] and c.empty_both == ["C"]
    assert c.mean_diff() == 1.0 and c.mean_absdiff() == 1.0 and c.mean_absreldiff() == pytest.approx(0.125)


def test_cross_subject_pairs_subjects_and_counts_each_structure():
    values = {
        "s1": {"a": {"thickness": {"r1": 2.0, "r2": 3.0}}, "b": {"thickness": {"r1": 2.1, "r2": 3.1}}},
        "s2": {"a": {"thickness": {"r1": 2.5, "r2": 2.0}}, "b": {"thickness": {"r1": 2.4}}},
        "s3": {"a": {"thickness": {"r1": 3.0}}, "b": {"thickness": {"r1": 3.3}}},
        "s4": {"b": {"thickness": {"r1": 9.0}}},
    }
    t = cross_subject(values, "a", "b")
    assert t.subjects == ["s1", "s2", "s3"] and t.unpaired == {"s4": "b"}
    by = {r.name: r for r in t.rows}
    assert by["r1"].n == 3 and by["r2"].n == 1 and by["r2"].r is None and by["r2"].icc is None
    x, y = [2.0, 2.5, 3.0], [2.1, 2.4, 3.3]
    assert by["r1"].r == pytest.approx(r_by_hand(x, y))
    assert by["r1"].icc == pytest.approx(icc21_by_hand([list(p) for p in zip(x, y, strict=True)]))
    assert by["r1"].mean_diff == pytest.approx(sum(a - b for a, b in zip(x, y, strict=True)) / 3)
