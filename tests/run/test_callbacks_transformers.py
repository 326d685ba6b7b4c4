"""The Transformers callback with the real ``transformers`` package: a tiny BERT built from a
config (no download; the hub is offline), a synthetic dataset, CPU, a real sqlite store. With
``report_to="mlflow"`` it logs into the run Transformers' ``MLflowCallback`` started, never a
second one; without it, into a run of its own; a ``train()`` that raises leaves partial totals
when the process exits."""

import json
import os
import subprocess
import sys

import pytest
from support.contract import documented, undocumented
from support.helpers import only_run

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import mlflow_wattsup  # noqa: E402
from mlflow_wattsup.sink import keys  # noqa: E402

SAMPLES, BATCH, SEQ = 32, 8, 16


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("DISABLE_MLFLOW_INTEGRATION", "FALSE")


def tiny_bert():
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=SEQ,
        num_labels=2,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


class Tokens(torch.utils.data.Dataset):
    """Synthetic token ids with a label (each item from its own seed: the same every time)."""

    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {
            "input_ids": torch.randint(0, 100, (SEQ,), generator=g),
            "attention_mask": torch.ones(SEQ, dtype=torch.long),
            "labels": torch.tensor(i % 2),
        }


def trainer(tmp_path, callback, report_to, **kw):
    args = transformers.TrainingArguments(
        str(tmp_path / "out"),
        per_device_train_batch_size=BATCH,
        report_to=report_to,
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        **kw,
    )
    return transformers.Trainer(model=tiny_bert(), args=args, train_dataset=Tokens(), callbacks=[callback])


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def our_keys(run):
    """The keys we logged: Transformers' own params (its arguments, the model config) and metrics
    (loss, learning_rate, train_runtime, total_flos...) are not ours."""
    hf = {"loss", "grad_norm", "learning_rate", "epoch", "total_flos", "train_loss", "train_runtime"}
    hf |= {"train_samples_per_second", "train_steps_per_second"}
    params = {k for k in run.data.params if k.startswith(keys.PREFIX)}
    return (set(run.data.metrics) - hf) | params | set(run.data.tags)


def test_report_to_mlflow_one_run(tracking_uri, client, experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)  # Transformers' MLflowCallback reads it
    cb = mlflow_wattsup.TransformersCallback(interval_s=0.2)
    tr = trainer(tmp_path, cb, ["mlflow"], num_train_epochs=2)
    tr.train()
    run = only_run(client, experiment)  # MLflowCallback's run, and no second one
    rid = run.info.run_id
    assert rid == cb.wattsup.run_id and run.info.status == "FINISHED"
    m, t = run.data.metrics, run.data.tags
    assert "train_loss" in m and "learning_rate" in m  # Transformers' own logging, same run
    assert t[keys.CALLBACK] == f"transformers {transformers.__version__}" and t[keys.CALLBACK_RUN] == "active"
    assert t[keys.STATUS] == "FINISHED"
    for key in ("epoch_energy_kwh", "epoch_duration_s", "epoch_power_w", "energy_cumulative_kwh"):
        assert [s for s, _ in history(client, rid, key)] == [0, 1], key
    assert t[keys.PREDICTION] == "linear" and t[keys.PLANNED_EPOCHS] == "2"
    pred = history(client, rid, "predicted_energy_kwh")
    per = [v for _, v in history(client, rid, "epoch_energy_kwh")]
    cum = history(client, rid, "energy_cumulative_kwh")
    assert pred[0][1] == pytest.approx(cum[0][1] + per[0], rel=1e-6)
    assert sum(per) <= m["energy_kwh"] * 1.0001 and m["carbon_g"] > 0 and m["duration_s"] > 0
    # the model's cost: one sample (1 x 16 tokens) through the trainer's collator
    model = tr.model
    assert m["params"] == sum(p.numel() for p in model.parameters())
    # BERT, hidden 16, intermediate 32, 2 layers, no bias counted: per layer Q, K, V, output
    # (4 x S x 16 x 16), feed-forward (2 x S x 16 x 32), attention scores and mix (2 x S x S x 16);
    # pooler 16 x 16, classifier 16 x 2. Attention runs as CPU SDPA here: counted too
    assert model.config._attn_implementation == "sdpa"
    per_layer = 4 * SEQ * 16 * 16 + 2 * SEQ * 16 * 32 + 2 * SEQ * SEQ * 16
    assert m["macs"] == 2 * per_layer + 16 * 16 + 16 * 2 == 82208
    assert t[keys.FLOPS_INPUT_SHAPE] == f"1x{SEQ};1x{SEQ}"  # input_ids, attention_mask (labels left out)
    assert m["train_flops_estimate"] == 3 * m["flops"] * SAMPLES * 2  # every sample, twice
    # our on_train_end ran before MLflowCallback's (which ends the run): totals before the end
    assert max(x.timestamp for x in client.get_metric_history(rid, "energy_kwh")) <= run.info.end_time
    assert undocumented(our_keys(run), documented()) == []


def test_without_mlflow_reporting_a_run_of_its_own_step_plan(
    tracking_uri, client, experiment, tmp_path, caplog
):
    import logging

    caplog.set_level(logging.WARNING, logger="mlflow_wattsup")
    cb = mlflow_wattsup.TransformersCallback(experiment=experiment, interval_s=0.2)
    # 4 steps per epoch; max_steps=6 ends training in the second epoch: the plan is in steps
    trainer(tmp_path, cb, [], max_steps=6).train()
    run = only_run(client, experiment)
    rid = run.info.run_id
    assert run.info.status == "FINISHED" and rid == cb.wattsup.run_id  # ours, ended by us
    t = run.data.tags
    assert t[keys.CALLBACK_RUN] == "own" and "train_loss" not in run.data.metrics
    assert sum(1 for r in caplog.records if "no MLflow run is active" in r.getMessage()) == 1
    assert t[keys.PLANNED_STEPS] == "6" and keys.PLANNED_EPOCHS not in t
    per = history(client, rid, "epoch_energy_kwh")
    assert [s for s, _ in per] == [0, 1]
    cum0 = history(client, rid, "energy_cumulative_kwh")[0][1]
    pred = history(client, rid, "predicted_energy_kwh")
    # 2 steps left at a quarter of epoch 0 each, on top of the energy read when epoch 0 ended
    assert pred[0][1] == pytest.approx(cum0 + per[0][1] * 2 / 4, rel=1e-9)
    import mlflow

    assert mlflow.active_run() is None  # our fluent run was ended
    assert undocumented(our_keys(run), documented()) == []


class Noisy(Tokens):
    """Token ids drawn from the global torch generator, as random augmentation does: reading a
    sample for the model's cost would shift everything training draws after it."""

    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["input_ids"] = torch.randint(0, 100, (SEQ,))
        return item


def test_counting_the_cost_leaves_training_unchanged(tracking_uri, experiment, tmp_path):
    def train(callbacks):
        transformers.set_seed(0)
        args = transformers.TrainingArguments(
            str(tmp_path / "out"),
            per_device_train_batch_size=BATCH,
            num_train_epochs=1,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
        )
        tr = transformers.Trainer(model=tiny_bert(), args=args, train_dataset=Noisy(), callbacks=callbacks)
        tr.train()
        return {k: v.clone() for k, v in tr.model.state_dict().items()}

    cb = mlflow_wattsup.TransformersCallback(experiment=experiment, interval_s=0.5)
    with_cb, without = train([cb]), train([])
    assert cb.wattsup.cost is not None  # a sample was read and counted
    assert all(torch.equal(with_cb[k], without[k]) for k in without)


def test_exception_caught_then_close_ends_our_own_run_failed(tracking_uri, client, experiment, tmp_path):
    """Without MLflow reporting the run is ours: a train() that raises and is caught by the user's
    code is closed by close(), FAILED, with the totals measured until then."""

    class Crash(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:
                raise RuntimeError("boom at step 5")

    cb = mlflow_wattsup.TransformersCallback(experiment=experiment, interval_s=0.2)
    tr = trainer(tmp_path, cb, [], num_train_epochs=3)
    tr.add_callback(Crash())
    with pytest.raises(RuntimeError, match="boom"):
        tr.train()
    cb.close()
    run = only_run(client, experiment)
    rid = run.info.run_id
    assert run.info.status == "FAILED" and run.data.tags[keys.STATUS] == "FAILED"
    assert run.data.tags[keys.CALLBACK_RUN] == "own"
    assert [s for s, _ in history(client, rid, "epoch_energy_kwh")] == [0]
    assert run.data.metrics["energy_kwh"] > history(client, rid, "epoch_energy_kwh")[0][1]
    import mlflow

    assert mlflow.active_run() is None
    cb.close()  # a second close: nothing left to end
    assert only_run(client, experiment).info.status == "FAILED"


CRASH = """
import os, sys
import torch, transformers
import mlflow_wattsup

class Tokens(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {{"input_ids": torch.randint(0, 100, (16,), generator=g), "labels": torch.tensor(i % 2)}}

class Crash(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 6:
            raise RuntimeError("boom at step 6")

cfg = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=16, num_labels=2)
args = transformers.TrainingArguments({out!r}, per_device_train_batch_size=8, num_train_epochs=3,
                                      report_to=["mlflow"], save_strategy="no", use_cpu=True, disable_tqdm=True)
cb = mlflow_wattsup.TransformersCallback(interval_s=0.2)
trainer = transformers.Trainer(model=transformers.BertForSequenceClassification(cfg), args=args,
                               train_dataset=Tokens(), callbacks=[cb, Crash()])
trainer.train()
"""


@pytest.mark.slow
def test_exception_in_train_partial_totals_at_exit(tracking_uri, client, experiment, tmp_path):
    """Transformers has no exception hook: a script whose train() raises ends with the partial
    totals written at exit (our handler runs before MLflow's own, which then ends the run)."""
    script = tmp_path / "crash.py"
    script.write_text(CRASH.format(out=str(tmp_path / "out")))
    env = dict(os.environ, MLFLOW_EXPERIMENT_NAME=experiment, MLFLOW_TRACKING_URI=tracking_uri)
    p = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 1 and "boom at step 6" in p.stderr, p.stderr[-3000:]
    run = only_run(client, experiment)
    rid = run.info.run_id
    m, t = run.data.metrics, run.data.tags
    assert t[keys.STATUS] == "FAILED" and t[keys.CALLBACK_RUN] == "active"
    # MLflow's exit handler ends the fluent run FINISHED (Transformers never marks it failed)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history(client, rid, "epoch_energy_kwh")] == [0]  # epoch 1 never ended
    assert m["energy_kwh"] > history(client, rid, "epoch_energy_kwh")[0][1] and m["duration_s"] > 0
    assert "the process exits before the end of training" in p.stderr


DDP = """
import json, os, sys, time
import torch, transformers
import mlflow_wattsup

BURN_S = {burn}

class Tokens(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {{"input_ids": torch.randint(0, 100, (16,), generator=g), "labels": torch.tensor(i % 2)}}

class Burn(transformers.TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        s = time.process_time()
        while time.process_time() - s < BURN_S:
            pass

out = sys.argv[1]
cfg = transformers.BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=16, num_labels=2)
args = transformers.TrainingArguments(os.path.join(out, "out"), per_device_train_batch_size=8, num_train_epochs=2,
                                      report_to=["mlflow"], save_strategy="no", use_cpu=True, disable_tqdm=True,
                                      ddp_backend="gloo")
cb = mlflow_wattsup.TransformersCallback(interval_s=0.2)
trainer = transformers.Trainer(model=transformers.BertForSequenceClassification(cfg), args=args,
                               train_dataset=Tokens(), callbacks=[cb, Burn()])
trainer.train()
rank = args.process_index
with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
    json.dump(dict(rank=rank, pid=os.getpid(), ppid=os.getppid(), run_id=cb.wattsup.run_id,
                   measured=cb.wattsup.totals is not None), f)
"""


@pytest.mark.slow
def test_torchrun_two_processes_one_run_siblings_measured_once(tracking_uri, client, experiment, tmp_path):
    """``torchrun --nproc-per-node 2`` (gloo, CPU) with report_to=mlflow: the ranks are siblings
    under torchrun's agent, so rank 0 measures its parent's children (both ranks); one run,
    MLflowCallback's, with the totals written before it ends it."""
    burn_s = 0.1
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP.format(burn=burn_s))
    env = dict(
        os.environ,
        MLFLOW_EXPERIMENT_NAME=experiment,
        MLFLOW_TRACKING_URI=tracking_uri,
        WATTSUP_DIST_REPORT_S="30",
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    p = subprocess.run(
        [*cmd, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["ppid"] == ranks[1]["ppid"]  # siblings under torchrun's agent
    assert ranks[0]["measured"] and not ranks[1]["measured"] and ranks[1]["run_id"] is None
    run = only_run(client, experiment)
    rid = run.info.run_id
    assert rid == ranks[0]["run_id"] and run.info.status == "FINISHED"
    m, t = run.data.metrics, run.data.tags
    assert (
        t[keys.DIST_LAUNCHER] == "transformers" and t[keys.DIST_MODE] == "host" and t[keys.DIST_AGENTS] == "1"
    )
    assert t[keys.CALLBACK_RUN] == "active" and "train_loss" in m
    # 16 samples per rank per epoch, batch 8: 2 steps x 2 epochs, on each of the two ranks
    steps_per_rank = 2 * 2
    assert m["cpu_time_s"] >= 2 * steps_per_rank * burn_s * 0.95  # rank 1's CPU is in it too
    assert m[f"host/{t[keys.DIST_HOSTS]}/energy_kwh"] == pytest.approx(m["energy_kwh"])
    assert [s for s, _ in history(client, rid, "epoch_energy_kwh")] == [0, 1]
    assert max(x.timestamp for x in client.get_metric_history(rid, "energy_kwh")) <= run.info.end_time
    assert undocumented(our_keys(run), documented()) == []
