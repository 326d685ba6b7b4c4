"""The PyTorch Lightning callback with the real ``lightning`` package (tiny models on CPU, a real
sqlite tracking store): it logs into the run of the trainer's ``MLFlowLogger``, never a second
one; without one it measures into a run of its own; an exception leaves partial totals and the
status to Lightning's logger; under DDP (2 CPU processes, gloo, Lightning's own ``ddp``
launcher) one run, the host's ranks measured once."""

import json
import logging
import os
import subprocess
import sys
import time

import pytest
from support.contract import documented, undocumented
from support.helpers import only_run

pl = pytest.importorskip("lightning.pytorch")
torch = pytest.importorskip("torch")

import mlflow_wattsup  # noqa: E402
from mlflow_wattsup.sink import keys  # noqa: E402

BATCHES = 8  # per epoch: 64 samples, batch 8
BURN_S = 0.02  # CPU seconds burnt per training step


def burn(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass


class Regressor(pl.LightningModule):
    """Linear(16, 32) -> ReLU -> Linear(32, 1): 16*32 + 32*1 = 544 MACs per sample (no bias)."""

    def __init__(self, fail_at_step=None, with_forward=True):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
        self.fail_at_step = fail_at_step
        self.with_forward = with_forward

    def forward(self, x):
        if not self.with_forward:
            raise NotImplementedError("this module predicts in training_step only")
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.fail_at_step is not None and self.global_step == self.fail_at_step:
            raise RuntimeError("boom in training_step")
        x, y = batch
        burn(BURN_S)
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def loader():
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(64, 16, generator=g), torch.randn(64, 1, generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=8)


def trainer(tmp_path, callback, logger, **kw):
    return pl.Trainer(
        logger=logger,
        callbacks=[callback],
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        **kw,
    )


def mlflow_logger(tracking_uri, experiment):
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(experiment_name=experiment, tracking_uri=tracking_uri)


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


#: what Lightning itself (and the tests' modules) log into the same run
FRAMEWORK_KEYS = {"loss", "epoch", "user_metric"}


def logged_keys(run):
    """Every key we logged (the framework's own removed): all must be in docs/metrics.md."""
    return (set(run.data.metrics) | set(run.data.params) | set(run.data.tags)) - FRAMEWORK_KEYS


def test_import_needs_no_framework():
    code = (
        "import sys, mlflow_wattsup\n"
        "assert 'lightning' not in sys.modules and 'transformers' not in sys.modules\n"
        "assert 'LightningCallback' in mlflow_wattsup.__all__\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_logs_into_the_mlflow_loggers_run(tracking_uri, client, experiment, tmp_path):
    cb = mlflow_wattsup.LightningCallback(interval_s=0.2, region="CA-QC")
    logger = mlflow_logger(tracking_uri, experiment)
    trainer(tmp_path, cb, logger, max_epochs=3).fit(Regressor(), loader())
    run = only_run(client, experiment)  # the logger's run, and no second one
    rid = run.info.run_id
    assert rid == logger.run_id == cb.wattsup.run_id
    assert run.info.status == "FINISHED"
    m, t = run.data.metrics, run.data.tags
    assert "loss" in m  # Lightning's own logging, same run
    assert t[keys.CALLBACK] == f"lightning {pl.__version__}" and t[keys.CALLBACK_RUN] == "logger"
    assert t[keys.STATUS] == "FINISHED" and run.data.params[keys.REGION] == "CA-QC"
    # per epoch: energy, duration, carbon, cumulative, power; the prediction labelled
    for key in (
        "epoch_energy_kwh",
        "epoch_duration_s",
        "epoch_carbon_g",
        "energy_cumulative_kwh",
        "epoch_power_w",
    ):
        assert [s for s, _ in history(client, rid, key)] == [0, 1, 2], key
    assert t[keys.PREDICTION] == "linear" and t[keys.PLANNED_EPOCHS] == "3"
    pred = history(client, rid, "predicted_energy_kwh")
    cum = history(client, rid, "energy_cumulative_kwh")
    per = [v for _, v in history(client, rid, "epoch_energy_kwh")]
    assert [s for s, _ in pred] == [0, 1, 2]
    assert pred[0][1] == pytest.approx(cum[0][1] + per[0] * 2, rel=1e-6)  # 2 epochs left after epoch 0
    assert pred[-1][1] == pytest.approx(cum[-1][1], rel=1e-6)  # none left: the measured total so far
    power = [v for _, v in history(client, rid, "epoch_power_w")]
    dur = [v for _, v in history(client, rid, "epoch_duration_s")]
    assert power == pytest.approx([e * 3.6e6 / d for e, d in zip(per, dur, strict=True)], rel=1e-6)
    # each epoch burnt >= 8 x 20 ms of CPU in this process: estimated at >= 4 W per thread
    assert all(e * 3.6e6 >= BATCHES * BURN_S * 1.0 for e in per)
    # totals at the end of fit
    assert sum(per) <= m["energy_kwh"] * 1.0001 and m["duration_s"] > 0 and m["carbon_g"] > 0
    assert m["cpu_time_s"] >= 3 * BATCHES * BURN_S
    assert client.get_metric_history(rid, "system/wattsup_power_w")
    # the model's cost: one forward on the first training batch (8 x 16)
    assert m["params"] == sum(p.numel() for p in Regressor().parameters()) == 577
    assert m["macs"] == 8 * 544 and m["flops"] == 2 * 8 * 544
    assert t[keys.FLOPS_BACKEND] == "torch-flop-counter" and t[keys.FLOPS_INPUT_SHAPE] == "8x16"
    assert m["train_flops_estimate"] == 3 * 2 * 8 * 544 * 3 * BATCHES  # 3 x forward x batches trained
    assert undocumented(logged_keys(run), documented()) == []


def test_without_mlflow_logger_a_run_of_its_own_step_plan_and_uncountable_model(
    tracking_uri, client, experiment, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="mlflow_wattsup")
    cb = mlflow_wattsup.LightningCallback(experiment=experiment, interval_s=0.2)
    seen = {}

    class Logs(Regressor):
        def training_step(self, batch, batch_idx):
            import mlflow

            seen["active"] = mlflow.active_run().info.run_id  # the user's fluent calls land in our run
            mlflow.log_metric("user_metric", 1.0, step=self.global_step)
            return super().training_step(batch, batch_idx)

    # 10 steps of 8 per epoch: max_steps ends the fit in the second epoch (plan in steps)
    trainer(tmp_path, cb, False, max_steps=10).fit(Logs(with_forward=False), loader())
    run = only_run(client, experiment)
    rid = run.info.run_id
    assert run.info.status == "FINISHED" and seen["active"] == rid == cb.wattsup.run_id
    t, m = run.data.tags, run.data.metrics
    assert t[keys.CALLBACK_RUN] == "own" and "user_metric" in m and "energy_kwh" in m
    notes = [r.getMessage() for r in caplog.records if "no MLFlowLogger" in r.getMessage()]
    assert len(notes) == 1
    # the prediction is for the planned steps: after epoch 0 (8 steps), 2 steps at the mean step energy
    assert t[keys.PLANNED_STEPS] == "10" and t[keys.PREDICTION] == "linear" and keys.PLANNED_EPOCHS not in t
    per = history(client, rid, "epoch_energy_kwh")
    assert [s for s, _ in per] == [0, 1]
    pred = history(client, rid, "predicted_energy_kwh")
    cum0 = history(client, rid, "energy_cumulative_kwh")[0][1]
    assert [s for s, _ in pred] == [0, 1]
    # 2 steps left at an eighth of epoch 0 each, on top of the energy read when epoch 0 ended
    assert pred[0][1] == pytest.approx(cum0 + per[0][1] * 2 / 8, rel=1e-9)
    # a module without forward: its cost is not counted, training went on, the reason is a tag
    assert "params" not in m and "macs" not in m
    assert "NotImplementedError" in t[keys.WARNING_FLOPS]
    assert sum(1 for r in caplog.records if "not counted" in r.getMessage()) == 1
    assert undocumented(logged_keys(run), documented()) == []


def test_exception_in_training_partial_totals_status_from_lightning(
    tracking_uri, client, experiment, tmp_path
):
    cb = mlflow_wattsup.LightningCallback(interval_s=0.2)
    logger = mlflow_logger(tracking_uri, experiment)
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, cb, logger, max_epochs=3).fit(Regressor(fail_at_step=BATCHES + 3), loader())
    run = only_run(client, experiment)
    rid = run.info.run_id
    assert run.info.status == "FAILED"  # MLFlowLogger.finalize("failed"), after our on_exception
    m, t = run.data.metrics, run.data.tags
    assert t[keys.STATUS] == "FAILED"
    assert [s for s, _ in history(client, rid, "epoch_energy_kwh")] == [0]  # the second never ended
    assert m["energy_kwh"] > history(client, rid, "epoch_energy_kwh")[0][1]  # partial totals, past epoch 0
    assert m["cpu_time_s"] >= (BATCHES + 3) * BURN_S and m["duration_s"] > 0
    assert cb.wattsup.run is None and cb.wattsup.totals is not None  # measuring ended


DDP_SCRIPT = """
import json, os, sys, time
import torch, lightning.pytorch as pl
from lightning.pytorch.loggers import MLFlowLogger
import mlflow_wattsup

BURN_S = {burn}

class M(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(16, 1)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, i):
        x, y = batch
        s = time.process_time()
        while time.process_time() - s < BURN_S:
            pass
        return torch.nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

if __name__ == "__main__":
    uri, exp, out = sys.argv[1:4]
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(64, 16, generator=g), torch.randn(64, 1, generator=g))
    cb = mlflow_wattsup.LightningCallback(interval_s=0.2)
    trainer = pl.Trainer(
        max_epochs=2, logger=MLFlowLogger(experiment_name=exp, tracking_uri=uri), callbacks=[cb],
        accelerator="cpu", devices=2, strategy="ddp", default_root_dir=out, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(M(), torch.utils.data.DataLoader(ds, batch_size=8))
    info = dict(rank=trainer.global_rank, pid=os.getpid(), ppid=os.getppid(), run_id=cb.wattsup.run_id,
                measured=cb.wattsup.totals is not None)
    with open(os.path.join(out, f"rank{{trainer.global_rank}}.json"), "w") as f:
        json.dump(info, f)
"""


@pytest.mark.slow
def test_ddp_two_processes_one_run_host_measured_once(tracking_uri, client, experiment, tmp_path):
    """Lightning's ``ddp`` strategy on 2 CPU processes (gloo): Lightning's launcher re-runs the
    script for rank 1 as a child of rank 0. One run (the logger's), measured by rank 0 as the
    host's agent over both ranks' processes; rank 1 measures and logs nothing."""
    burn_s = 0.1
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT.format(burn=burn_s))
    env = dict(os.environ, WATTSUP_DIST_REPORT_S="30")
    p = subprocess.run(
        [sys.executable, str(script), tracking_uri, experiment, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[1]["ppid"] == ranks[0]["pid"]  # Lightning's launcher: rank 1 is rank 0's child
    assert ranks[0]["measured"] and not ranks[1]["measured"] and ranks[1]["run_id"] is None
    run = only_run(client, experiment)
    assert run.info.run_id == ranks[0]["run_id"] and run.info.status == "FINISHED"
    m, t = run.data.metrics, run.data.tags
    assert t[keys.DIST_MODE] == "host" and t[keys.DIST_LAUNCHER] == "lightning" and t[keys.DIST_AGENTS] == "1"
    host = t[keys.DIST_HOSTS]
    assert m[f"host/{host}/energy_kwh"] == pytest.approx(m["energy_kwh"])
    # 32 samples per rank per epoch (DistributedSampler), batch 8: 4 steps x 2 epochs x 2 ranks
    steps_per_rank = 4 * 2
    # both ranks' training CPU is in the run's CPU time (rank 1's alone would miss half)
    assert m["cpu_time_s"] >= 2 * steps_per_rank * burn_s * 0.95
    assert [s for s, _ in history(client, run.info.run_id, "epoch_energy_kwh")] == [0, 1]
    assert m["params"] == 17 and m["macs"] == 8 * 16
    assert m["train_flops_estimate"] == 3 * 2 * 8 * 16 * steps_per_rank * 2
    assert client.get_metric_history(run.info.run_id, f"host/{host}/power_w")
    assert undocumented(logged_keys(run), documented()) == []


def test_pytorch_lightning_package_takes_its_own_callback(tracking_uri, client, experiment, tmp_path):
    """``import pytorch_lightning`` code: Lightning accepts only callbacks of its own package, so
    that package gets a class of its own, which logs into its MLFlowLogger's run the same way."""
    ptl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.loggers import MLFlowLogger

    from mlflow_wattsup.run.callbacks.lightning import PytorchLightningCallback

    class Module(ptl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(16, 1)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    cb = PytorchLightningCallback(interval_s=0.2)
    assert isinstance(cb, ptl.Callback)
    logger = MLFlowLogger(experiment_name=experiment, tracking_uri=tracking_uri)
    ptl.Trainer(
        max_epochs=2,
        logger=logger,
        callbacks=[cb],
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    ).fit(Module(), loader())
    run = only_run(client, experiment)
    assert run.info.run_id == logger.run_id and run.info.status == "FINISHED"
    assert run.data.tags[keys.CALLBACK_RUN] == "logger" and "energy_kwh" in run.data.metrics
    assert [s for s, _ in history(client, run.info.run_id, "epoch_energy_kwh")] == [0, 1]
    assert run.data.metrics["params"] == 17 and run.data.metrics["macs"] == 8 * 16
