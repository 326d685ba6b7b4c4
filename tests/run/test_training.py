import sys
import time

import pytest
from support.helpers import only_run, wattsup

import mlflow_wattsup


def burn(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass


def history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_epochs_energy_cumulative_and_linear_prediction(client, experiment):
    with mlflow_wattsup.track("train", experiment=experiment, cpu_w_per_thread=10.0) as t:
        epochs = t.epochs(planned=10, warmup=2)
        for e in range(4):
            with epochs.epoch(e):
                burn(0.2)
                epochs.step()
                burn(0.1)
                epochs.step()
    run = only_run(client, experiment)
    rid = run.info.run_id
    per = history(client, rid, "epoch_energy_kwh")
    assert [s for s, _ in per] == [0, 1, 2, 3]
    for _, kwh in per:  # 0.3 CPU-s at 10 W/thread = 3 J, plus a little RAM
        assert kwh * 3.6e6 == pytest.approx(3.0, rel=0.15)
    cum = history(client, rid, "energy_cumulative_kwh")
    assert all(b[1] > a[1] for a, b in zip(cum, cum[1:], strict=False))
    pred = history(client, rid, "predicted_energy_kwh")
    assert [s for s, _ in pred] == [1, 2, 3]  # from the warmup-th epoch on
    e = [v for _, v in per]
    last_cum = cum[-1][1]
    assert pred[-1][1] == pytest.approx(last_cum + sum(e) / 4 * 6, rel=1e-6)
    assert len(history(client, rid, "step_energy_kwh")) == 8
    assert run.data.tags["wattsup.prediction"] == "linear"
    assert sum(e) <= run.data.metrics["energy_kwh"] * 1.0001
    assert history(client, rid, "predicted_carbon_g")[-1][1] == pytest.approx(
        pred[-1][1] * float(run.data.params["wattsup.carbon_intensity_g_per_kwh"]), rel=1e-6
    )


def test_epochs_outside_block_and_bad_values():
    t = mlflow_wattsup.track(carbon_intensity=1)
    with pytest.raises(RuntimeError):
        t.epochs()


def test_cli_epoch_regex(tracking_uri, client, experiment):
    code = (
        "import time\nfor e in range(3):\n    t = time.process_time()\n"
        "    while time.process_time() - t < 0.3: pass\n    print(f'Epoch [{e + 1}/3] loss 0.1', "
        "flush=True)\n"
    )
    r = wattsup(
        "run",
        "--experiment",
        experiment,
        "--quiet",
        "--epoch-regex",
        r"Epoch \[(\d+)/",
        "--planned-epochs",
        "6",
        "--",
        sys.executable,
        "-c",
        code,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Epoch [") == 3  # output still reaches the user
    rid = only_run(client, experiment).info.run_id
    assert [s for s, _ in history(client, rid, "epoch_energy_kwh")] == [1, 2, 3]
    pred = history(client, rid, "predicted_energy_kwh")
    assert len(pred) == 3 and pred[-1][1] > history(client, rid, "energy_cumulative_kwh")[-1][1]


@pytest.mark.parametrize("args", [["--epoch-regex", "("], ["--planned-epochs", "0", "--epoch-regex", "x"]])
def test_cli_epoch_options_validated(args):
    r = wattsup("run", *args, "--", "true")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
