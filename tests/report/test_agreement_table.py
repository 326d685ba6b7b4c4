"""The agreement tables as a reader gets them: markdown, HTML, CSV (the values: tests/analysis)."""

import pytest

from mlflow_wattsup.analysis.agreement_stats import compare, cross_subject
from mlflow_wattsup.report.agreement_table import comparison_csv, logged_values, render


def test_a_runs_comparison_as_csv_says_what_was_not_compared():
    c = compare({"A": 10.0, "B": 5.0, "C": 0.0, "X": 1.0}, {"A": 8.0, "B": 5.0, "C": 0.0, "Y": 2.0}, "volume")
    csv_text = comparison_csv(c)
    assert csv_text.splitlines()[0] == "name,run_mm3,reference_mm3,diff_mm3,reldiff,note"
    assert "A,10,8,2,0.25," in csv_text
    assert "X,1,,,,run only" in csv_text and "Y,,2,,,reference only" in csv_text
    assert "C,0,0,,,empty in both: not compared" in csv_text


def test_the_table_in_every_format():
    values = {
        "s1": {"a": {"thickness": {"r1": 2.0, "r2": 3.0}}, "b": {"thickness": {"r1": 2.1, "r2": 3.1}}},
        "s2": {"a": {"thickness": {"r1": 2.5, "r2": 2.0}}, "b": {"thickness": {"r1": 2.4}}},
        "s3": {"a": {"thickness": {"r1": 3.0}}, "b": {"thickness": {"r1": 3.3}}},
        "s4": {"b": {"thickness": {"r1": 9.0}}},
    }
    t = cross_subject(values, "a", "b")
    md = render(t, "markdown")
    assert "| thickness (mm) | r1 | 3 |" in md and "s4 (b only)" in md and "ICC(2,1)" in md
    assert "|---|---|---:|---:|---:|---:|---:|---:|" in md  # numbers right-aligned
    assert "| thickness (mm) | r2 | 1 | 3.000 | 3.100 | -0.100 | n/a | n/a |" in md
    page = render(t, "html")
    assert '<table class="wattsup-agreement">' in page and "<th>ICC(2,1)</th>" in page
    assert render(t, "csv").startswith("measure,unit,name,n,")
    assert "thickness,mm,r2,1,3,3.1,-0.1,," in render(t, "csv")
    with pytest.raises(ValueError, match="markdown, html or csv"):
        render(t, "pdf")
    assert "No structure measured by both" in render(cross_subject({}, "a", "b"), "markdown")


def test_logged_values_read_back_what_a_run_logged():
    metrics = {"volume_mm3/Left-Hippocampus": 4000.0, "thickness_mm/ctx-lh-insula": 2.9, "energy_kwh": 1.0}
    assert logged_values(metrics) == {
        "volume": {"Left-Hippocampus": 4000.0},
        "thickness": {"ctx-lh-insula": 2.9},
    }
