"""`--sweep`: parsing, the product of values, the children it plans and the study's identity."""

import pytest
from support.study import cohort, stub_project

from mlflow_wattsup.study import plan as planning
from mlflow_wattsup.study import subjects as subj
from mlflow_wattsup.study import sweep as sweeping


@pytest.fixture
def setup(tmp_path):
    project = stub_project(tmp_path / "stub")
    subjects = subj.from_tsv(cohort(tmp_path / "data"))
    a = planning.Pipeline.parse(f"a={project}#seg")
    b = planning.Pipeline.parse(f"b={project}#seg")
    return subjects, [a, b]


def test_sweeps_multiply_per_pipeline_and_fill_params(setup, tmp_path):
    subjects, (a, b) = setup
    sweeps = sweeping.parse(["burn_s=0,0.5,1", "a.name=x,{subject}"], [a, b])
    combos = sweeping.combinations(sweeps, [a, b])
    assert combos["a"] == [{"burn_s": v, "name": n} for v in ("0", "0.5", "1") for n in ("x", "{subject}")]
    assert combos["b"] == [{"burn_s": v} for v in ("0", "0.5", "1")]
    children = planning.plan(subjects, [a, b], ["cpu"], tmp_path, combos)
    assert len(children) == (6 + 3) * 2  # a: 3 x 2 values, b: 3 values; 2 subjects each
    assert len({c.key for c in children}) == len(children)  # each value its own params_hash
    c = next(
        c for c in children if c.pipeline.name == "a" and c.subject.id == "s2" and c.sweep["name"] != "x"
    )
    assert c.params["name"] == "s2" and c.sweep == {"burn_s": "0", "name": "{subject}"}
    assert c.run_name == "a s2 cpu burn_s=0 name={subject}"
    assert sweeping.parent_params(sweeps) == {
        "wattsup.study.sweep.a.burn_s": "0,0.5,1",
        "wattsup.study.sweep.b.burn_s": "0,0.5,1",
        "wattsup.study.sweep.a.name": "x,{subject}",
    }
    # the identity: unchanged without sweeps, another one with them, and per value list
    base = planning.spec_sha256("d", [a, b], ["cpu"])
    assert planning.spec_sha256("d", [a, b], ["cpu"], sweeping.spec([])) == base
    other = sweeping.parse(["burn_s=0,0.5"], [a, b])
    assert (
        len(
            {
                base,
                planning.spec_sha256("d", [a, b], ["cpu"], sweeping.spec(sweeps)),
                planning.spec_sha256("d", [a, b], ["cpu"], sweeping.spec(other)),
            }
        )
        == 3
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        ("epochs=1,2", "no pipeline declares 'epochs'"),
        ("a.epochs=1,2", "pipeline a (seg) has no parameter 'epochs'"),
        ("burn_s=", "give one or more values"),
        ("burn_s=1,,2", "none empty"),
        ("burn_s=1,1", "value '1' is given twice"),
        ("device=cpu,gpu", "use --device cpu --device gpu"),
        ("sid=a,b", "sid is filled from each subject"),
        ("burn_s", "give [PIPELINE.]NAME=V1,V2"),
    ],
)
def test_bad_sweeps_are_one_line(setup, spec, message):
    _, pipelines = setup
    with pytest.raises(planning.PlanError) as e:
        sweeping.parse([spec], pipelines)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_parameter_swept_twice_or_also_given_is_refused(setup):
    _, (a, b) = setup
    with pytest.raises(planning.PlanError, match="already sweeps 'burn_s'"):
        sweeping.parse(["burn_s=0,1", "a.burn_s=2,3"], [a, b])
    planning.assign_params([a, b], ["a.burn_s=2"])
    with pytest.raises(planning.PlanError, match=r"a.burn_s is also given with -P burn_s=2"):
        sweeping.parse(["burn_s=0,1"], [a, b])
