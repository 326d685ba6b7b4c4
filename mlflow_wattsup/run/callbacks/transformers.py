"""Hugging Face Transformers: ``mlflow_wattsup.TransformersCallback``, measuring ``Trainer.train``
into the run Transformers' MLflow integration logs to::

    import mlflow_wattsup

    args = TrainingArguments("out", num_train_epochs=3, report_to="mlflow")
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[mlflow_wattsup.TransformersCallback()])
    trainer.train()

Transformers' ``MLflowCallback`` (``report_to="mlflow"``) logs to MLflow's active fluent run,
starting one at ``on_train_begin`` when none is active; it runs before the callbacks a user adds,
so at our ``on_train_begin`` that run is active and we join it. Each training epoch is one epoch;
the model's cost is counted on one sample of the training set (collated by the trainer's own
collator, the random generators left as they were). ``MLflowCallback``'s ``on_train_end`` ends
the run it started (FINISHED), so once both have seen ``on_train_begin`` we move ourselves before
it in the trainer's callback list: our totals are logged before the run ends (under DDP, rank 0
would otherwise find its run ended and leave it without totals). Transformers has no exception hook: when ``train()`` raises, the partial totals are
logged when the process exits (or at the next ``train()`` with the same callback, or at
:meth:`TransformersCallback.close`). See docs/callbacks.md.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import transformers

from mlflow_wattsup.run.callbacks.measure import Dist, FitMeasurement, planned_epochs_of

NO_RUN = (
    "transformers callback: no MLflow run is active at the start of training (report_to has no "
    "'mlflow' and no mlflow.start_run() is open): measuring into $MLFLOW_RUN_ID's run, else a new run "
    "of our own (as mlflow_wattsup.track() does)"
)
#: batch keys that feed the loss, not the forward pass of the model
LABEL_KEYS = ("labels", "label", "label_ids", "start_positions", "end_positions")


def _active_run_id() -> str | None:
    if "mlflow" not in sys.modules:
        return None
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _dist(args: Any) -> Dist | None:
    world = int(args.world_size)
    if world <= 1:
        return None
    import torch.distributed

    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return None
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE") or world)
    rank = int(args.process_index)
    return Dist(
        rank=rank,
        world_size=world,
        local_rank=int(args.local_process_index),
        local_size=local_size,
        node=rank // local_size,
        nodes=-(-world // local_size),
        broadcast=_broadcast,
    )


def _plan(args: Any, state: Any) -> tuple[int | None, int | None]:
    """(epochs, steps): whole epochs where ``num_train_epochs`` is whole and no ``max_steps`` is
    set, else the optimizer steps the trainer computed (``state.max_steps``)."""
    epochs = planned_epochs_of(args.num_train_epochs)
    if (args.max_steps is None or args.max_steps <= 0) and epochs is not None:
        return epochs, None
    steps = int(state.max_steps or 0)
    return None, steps if steps > 0 else None


def _sample_inputs(train_dataloader: Any, device: Any) -> list[Any]:
    """One training sample, collated by the trainer's own collator, on the model's device:
    without its label keys (the forward pass alone), then as is."""
    import torch

    dataset = getattr(train_dataloader, "dataset", None)
    collate = getattr(train_dataloader, "collate_fn", None)
    if dataset is None or collate is None or not hasattr(dataset, "__getitem__"):
        return []
    batch = collate([dataset[0]])

    def moved(x):
        return x.to(device) if isinstance(x, torch.Tensor) and device is not None else x

    if isinstance(batch, dict) or hasattr(batch, "items"):
        batch = {k: moved(v) for k, v in batch.items()}
        bare = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        return [bare, batch] if bare and len(bare) < len(batch) else [batch]
    if isinstance(batch, torch.Tensor):
        return [moved(batch)]
    if isinstance(batch, list | tuple) and batch:
        return [moved(batch[0]), tuple(moved(x) for x in batch)]
    return []


class TransformersCallback(transformers.TrainerCallback):
    """Energy, power, carbon, the predicted total and the model's cost of ``Trainer.train``, in
    the run Transformers' MLflow integration logs to (module docstring; options: see
    :class:`~mlflow_wattsup.run.callbacks.measure.FitMeasurement`)."""

    def __init__(self, **options: Any):
        self.wattsup = FitMeasurement("transformers", transformers.__version__, **options)
        self._epoch = 0
        self._steps0 = 0

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        m = self.wattsup
        self._before_mlflow_callback(sys._getframe(1))
        run_id = _active_run_id() if state.is_world_process_zero else None
        dist = _dist(args)
        m.begin(
            run_id=run_id,
            tracking_uri=_tracking_uri() if run_id else None,
            source="active" if run_id else None,
            no_logger_note=NO_RUN,
            dist=dist,
        )
        m.plan(*_plan(args, state))
        self._epoch = int(state.epoch or 0)
        self._steps0 = int(state.global_step or 0)
        if model is not None and train_dataloader is not None and m.wants_cost():
            device = getattr(model, "device", None)
            m.model_cost(model, lambda: _sample_inputs(train_dataloader, device), "sample", device)

    def _before_mlflow_callback(self, frame) -> bool:
        """Move this callback just before Transformers' ``MLflowCallback`` in the trainer's list,
        now that both have seen ``on_train_begin`` (it first: its run is active for us): then our
        ``on_train_end`` logs the totals before its own ends the run. The list is the one of the
        caller that holds this callback (the trainer's callback handler); if none is found, the
        order stays and the totals follow the run's end. True when the order is ours."""
        try:
            from transformers.integrations import MLflowCallback
        except Exception:
            return False
        for _ in range(6):
            if frame is None:
                return False
            cbs = getattr(frame.f_locals.get("self"), "callbacks", None)
            if isinstance(cbs, list) and any(cb is self for cb in cbs):
                mine = next(i for i, cb in enumerate(cbs) if cb is self)
                first = next((i for i, cb in enumerate(cbs) if isinstance(cb, MLflowCallback)), None)
                if first is not None and first < mine:
                    # the handler is iterating this list at `mine`: the elements it already called
                    # shift right by one, and it goes on with the one after us, as it would have
                    cbs.insert(first, cbs.pop(mine))
                return True
            frame = frame.f_back
        return False

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.wattsup.epoch_start(state.global_step)

    def on_epoch_end(self, args, state, control, **kwargs):
        self.wattsup.epoch_end(self._epoch, state.global_step)
        self._epoch += 1

    def on_train_end(self, args, state, control, **kwargs):
        m = self.wattsup
        passes = None
        if m.cost_unit == "sample":  # samples trained on in this train() call, all ranks
            steps = int(state.global_step or 0) - self._steps0
            passes = steps * int(args.train_batch_size) * int(args.gradient_accumulation_steps)
            passes *= max(1, int(args.world_size))
        m.end("FINISHED", passes)

    def close(self, status: str = "FAILED") -> None:
        """End a measurement that ``train()`` left open (it raised, and the process goes on): the
        partial totals are logged now; the run is ended only if it is our own."""
        self.wattsup.end(status)


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()
