"""PyTorch Lightning: ``mlflow_wattsup.LightningCallback``, measuring ``Trainer.fit`` into the run
of the trainer's ``MLFlowLogger``::

    from lightning.pytorch.loggers import MLFlowLogger
    import mlflow_wattsup

    logger = MLFlowLogger(experiment_name="unet", tracking_uri="sqlite:///mlflow.db")
    trainer = Trainer(max_epochs=20, logger=logger, callbacks=[mlflow_wattsup.LightningCallback(region="CA-QC")])
    trainer.fit(model, datamodule)

Hooks: ``on_fit_start`` resolves the run and starts measuring (Lightning has created the logger's
run in its setup by then), each training epoch (its validation included) is one epoch, the first
training batch (or the module's ``example_input_array``) gives the model's cost, ``on_fit_end``
logs the totals before Lightning's logger ends the run FINISHED, and ``on_exception`` logs the
partial totals before the logger ends it FAILED. The package ``pytorch_lightning`` (the same
framework under its old name) takes :class:`PytorchLightningCallback`. See docs/callbacks.md.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl

from mlflow_wattsup.run.callbacks.measure import Dist, FitMeasurement, planned_epochs_of

NO_LOGGER = (
    "lightning callback: the trainer has no MLFlowLogger: measuring into the active MLflow run, "
    "$MLFLOW_RUN_ID's, else a new run of our own (as mlflow_wattsup.track() does); add "
    "MLFlowLogger(...) to the trainer's loggers to measure into its run"
)


def mlflow_loggers(trainer: Any) -> list[Any]:
    """The trainer's MLflow loggers (of either package name): what has MLFlowLogger's run_id and
    MlflowClient experiment."""
    return [lg for lg in trainer.loggers if type(lg).__name__ == "MLFlowLogger" and hasattr(lg, "run_id")]


def _dist(trainer: Any) -> Dist | None:
    if trainer.world_size <= 1:
        return None
    strategy = trainer.strategy
    return Dist(
        rank=trainer.global_rank,
        world_size=trainer.world_size,
        local_rank=trainer.local_rank,
        local_size=max(1, trainer.num_devices),
        node=trainer.node_rank,
        nodes=max(1, trainer.num_nodes),
        broadcast=lambda obj: strategy.broadcast(obj, src=0),
        # Lightning's own `ddp` launcher starts the other local ranks as children of local rank 0
        spawned_local=bool(getattr(getattr(strategy, "launcher", None), "procs", None)),
    )


def _plan(trainer: Any) -> tuple[int | None, int | None]:
    """(epochs, steps): the step plan where ``max_steps`` ends the fit first, else whole epochs."""
    epochs = planned_epochs_of(trainer.max_epochs)
    max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
    if max_steps is None:
        return epochs, None
    try:
        total = float(trainer.estimated_stepping_batches)
    except Exception:  # no length known: the step limit is the plan
        total = math.inf
    if epochs is None or total >= max_steps:
        return None, max_steps
    return epochs, None


def _batch_inputs(batch: Any) -> list[Any]:
    """What the module's forward may take from a training batch, most likely first: the batch
    itself when it is a tensor or a dict, the first element of an ``(x, y)`` pair, all elements."""
    import torch

    if isinstance(batch, torch.Tensor | dict):
        return [batch]
    if isinstance(batch, list | tuple) and batch:
        return [batch[0], tuple(batch)]
    return []


class _Hooks:
    """The hooks of both packages' callbacks (the base class differs)."""

    def __init__(self, **options: Any):
        super().__init__()
        self.wattsup = FitMeasurement("lightning", pl.__version__, **options)
        self._batches = 0
        self._world = 1

    # -- fit ------------------------------------------------------------------------------------

    def on_fit_start(self, trainer, pl_module) -> None:
        m = self.wattsup
        loggers = mlflow_loggers(trainer)
        run_id = uri = source = None
        if loggers and trainer.global_rank == 0:
            run_id = loggers[0].run_id
            uri = loggers[0].experiment.tracking_uri
            source = "logger"
        elif loggers:
            source = "logger"  # rank 0's run and URI are broadcast
        dist = _dist(trainer)
        self._world = trainer.world_size
        self._batches = 0
        m.begin(run_id=run_id, tracking_uri=uri, source=source, no_logger_note=NO_LOGGER, dist=dist)
        m.plan(*_plan(trainer))
        example = getattr(pl_module, "example_input_array", None)
        if example is not None and m.wants_cost():
            from lightning.fabric.utilities.apply_func import move_data_to_device

            m.model_cost(
                pl_module, [move_data_to_device(example, pl_module.device)], "example", pl_module.device
            )

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.wattsup.epoch_start(trainer.global_step)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._batches += 1
        if self.wattsup.wants_cost():
            self.wattsup.model_cost(pl_module, _batch_inputs(batch), "batch", pl_module.device)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.wattsup.epoch_end(trainer.current_epoch, trainer.global_step)

    def on_fit_end(self, trainer, pl_module) -> None:
        m = self.wattsup
        passes = self._batches * self._world if m.cost_unit == "batch" else None
        m.end("FINISHED", passes)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.wattsup.end("KILLED" if isinstance(exception, KeyboardInterrupt) else "FAILED")


class LightningCallback(_Hooks, pl.Callback):
    """Energy, power, carbon, the predicted total and the model's cost of ``Trainer.fit``, in the
    run of the trainer's ``MLFlowLogger`` (module docstring; options: see
    :class:`~mlflow_wattsup.run.callbacks.measure.FitMeasurement`)."""


def __getattr__(name: str):
    if name == "PytorchLightningCallback":  # built on first use: `pytorch_lightning` is another import
        import pytorch_lightning

        cls = type(
            "PytorchLightningCallback",
            (_Hooks, pytorch_lightning.Callback),
            {"__doc__": "LightningCallback for `import pytorch_lightning` code.", "__module__": __name__},
        )
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
