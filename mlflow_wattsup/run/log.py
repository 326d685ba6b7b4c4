"""Log model cost and segmentation quality to an MLflow run (through the one sink)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from mlflow_wattsup.sink import keys
from mlflow_wattsup.sink.transport import Store
from mlflow_wattsup.sink.writer import MlflowSink


@contextlib.contextmanager
def target_run(
    run_id: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    store: Store | None = None,
) -> Iterator[MlflowSink]:
    """A sink for: ``run_id``; else the active fluent run; else ``$MLFLOW_RUN_ID``; else a new
    run in ``experiment`` (ended FINISHED, or FAILED if the block raises). ``store``: the tracking
    store to use (default: ``tracking_uri``'s)."""
    from mlflow_wattsup.run.lifecycle import TrackedRun

    with TrackedRun(
        tracking_uri=tracking_uri,
        run_id=run_id,
        experiment=experiment,
        run_name=run_name,
        flush_interval_s=0,
        store=store,
    ) as run:
        yield run.sink


def log_model_cost(
    model: Any,
    input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
    example_inputs: Any = None,
    *,
    samples_seen: int | None = None,
    passes: int = 1,
    run_id: str | None = None,
    experiment: str | None = None,
    backends: Sequence[str] | None = None,
):
    """Count and log ``params``, ``params_trainable``, ``macs``, ``flops`` (= 2 x MACs), the
    cross-check counts, and the per-layer table (``wattsup/model_layers.csv``). ``passes``: the
    run made that many forward passes on this input shape (e.g. one per slice), and ``macs`` is
    their total. With ``samples_seen``, also ``train_flops_estimate`` (3 x forward FLOPs of one
    pass x samples). Returns the :class:`~mlflow_wattsup.analysis.flops.ModelCost`."""
    from mlflow_wattsup.analysis.flops import DEFAULT_BACKENDS, model_cost

    cost = model_cost(model, input_shape, example_inputs, backends or DEFAULT_BACKENDS).times(passes)
    with target_run(run_id, experiment, run_name=type(model).__name__) as sink:
        log_cost(cost, sink, samples_seen)
    return cost


def log_cost(cost, sink: MlflowSink, samples_seen: int | None = None) -> None:
    """Log an already counted :class:`~mlflow_wattsup.analysis.flops.ModelCost` through ``sink``."""
    sink.log_metrics(keys.model_cost_metrics(cost, samples_seen))
    sink.set_tags(keys.model_cost_tags(cost))
    if cost.layers:
        sink.log_text(cost.layers_csv(), "wattsup/model_layers.csv")


def log_dice(
    result,
    *,
    prefix: str = "dice",
    run_id: str | None = None,
    experiment: str | None = None,
    sink: MlflowSink | None = None,
):
    """Log a :class:`~mlflow_wattsup.analysis.dice.DiceResult`: ``<prefix>/<label name>`` per label,
    ``<prefix>_mean`` (unweighted, over the labels listed in ``wattsup.<prefix>.labels``),
    ``<prefix>_labels_n``, and the table ``wattsup/<prefix>.csv`` (volumes included)."""
    with contextlib.nullcontext(sink) if sink is not None else target_run(run_id, experiment, "dice") as s:
        s.log_metrics(keys.dice_metrics(result, prefix))
        s.set_tags(keys.dice_tags(result, prefix))
        s.log_text(result.to_csv(), f"wattsup/{prefix}.csv")
    return result
