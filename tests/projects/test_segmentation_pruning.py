"""`projects/segmentation` pruning parameters, run as users run them (`mlflow run`): channel pruning
of deepbet on Colin27 really shrinks the network, bad fractions and a network pruned past working
end in one line."""

from pathlib import Path

import pytest
from support.contract import documented, undocumented
from support.projects import mlflow_run, our_lines, runs_in

from mlflow_wattsup.projects.segmentation import COLIN_T1

SEG = Path(__file__).resolve().parents[2] / "projects" / "segmentation"


@pytest.fixture
def colin():
    pytest.importorskip("deepbet")
    if not Path(COLIN_T1).exists():
        pytest.skip("Debian's mricron-data (Colin27) is not installed")


def dense_params() -> int:
    import warnings

    import torch
    from deepbet.utils import DATA_PATH

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load: deepbet's format
        return sum(
            p.numel()
            for n in ("model.pt", "bbox_model.pt")
            for p in torch.jit.load(f"{DATA_PATH}/models/{n}").parameters()
        )


@pytest.mark.slow
def test_channel_pruning_shrinks_deepbet_and_says_so(colin, tracking_uri, client, experiment, tmp_path):
    r = mlflow_run(
        SEG,
        "prune_channels=0.5",
        entry="brain_extraction",
        cwd=tmp_path,
        env={"MLFLOW_EXPERIMENT_NAME": experiment},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = runs_in(client, experiment)
    m, tags = run.data.metrics, run.data.tags
    assert m["params"] < dense_params() * 0.6  # half the paired channels gone: about half the weights
    assert m["params_nonzero"] <= m["params"] and m["sparsity"] < 1e-5  # nothing zeroed, removed
    assert m["macs_nonzero"] == pytest.approx(m["macs"], rel=1e-6)
    assert tags["wattsup.prune"].startswith("L1 channels 0.5 (torch.nn.utils.prune.LnStructured")
    assert m["dice/brain"] > 0.7 and m["stage/prune/duration_s"] >= 0
    assert undocumented(set(m) | set(tags), documented()) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "params, needle",
    [
        (["prune=1.5"], "prune='1.5' must be a fraction from 0 to 1"),
        (["prune=-0.1"], "prune='-0.1' must be a finite number >= 0"),
        (["prune_channels=1"], "prune_channels='1' must be a fraction from 0 to below 1"),
        (["prune=0.95"], "its networks were pruned (prune=0.95, prune_channels=0), try less"),
    ],
)
def test_bad_or_excessive_pruning_is_one_line(colin, tracking_uri, tmp_path, experiment, params, needle):
    r = mlflow_run(
        SEG, *params, entry="brain_extraction", cwd=tmp_path, env={"MLFLOW_EXPERIMENT_NAME": experiment}
    )
    assert r.returncode != 0
    lines = our_lines(r.stderr, "segmentation")
    assert len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
