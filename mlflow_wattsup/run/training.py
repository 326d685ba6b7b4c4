"""Energy of a training loop, epoch by epoch, with a prediction of the total.

::

    with mlflow_wattsup.track("train", experiment="unet") as t:
        epochs = t.epochs(planned=50)           # predict after 1 measured epoch (warmup=1)
        for epoch in range(50):
            with epochs.epoch(epoch):
                for batch in loader:
                    ...
                    epochs.step()               # optional: per-step energy
            mlflow.log_metric("loss", loss, step=epoch)

Per epoch (MLflow step = the epoch number): ``epoch_energy_kwh``, ``epoch_duration_s``,
``epoch_carbon_g``, ``energy_cumulative_kwh``. Once ``warmup`` epochs are measured, and after
every epoch since: ``predicted_energy_kwh``, ``predicted_carbon_g``, ``predicted_duration_s`` for
``planned`` epochs, by linear extrapolation: measured so far + (mean of the measured epochs) x
epochs left. The prediction assumes later epochs cost what the measured ones did (no early
stopping, no schedule changes): it is labelled ``wattsup.prediction=linear`` and never replaces a
measured total. ``step()`` logs ``step_energy_kwh`` with the global step (one meter reading per
call, ~1 ms: use it for steps of 0.1 s or more).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mlflow_wattsup.analysis.carbon import CarbonConfig
from mlflow_wattsup.meters.units import kwh
from mlflow_wattsup.sink import MlflowSink, keys
from mlflow_wattsup.tracking.tracker import Tracker


class EpochEnergy:
    def __init__(
        self,
        tracker: Tracker,
        sink: MlflowSink,
        carbon: CarbonConfig,
        planned: int | None = None,
        warmup: int = 1,
    ):
        if planned is not None and int(planned) < 1:
            raise ValueError(f"planned epochs must be >= 1, got {planned}")
        if int(warmup) < 1:
            raise ValueError(f"warmup epochs must be >= 1, got {warmup}")
        self.tracker = tracker
        self.sink = sink
        self.carbon = carbon
        self.planned = int(planned) if planned is not None else None
        self.warmup = int(warmup)
        self.epoch_energy_j: list[float] = []
        self.epoch_duration_s: list[float] = []
        self._start: tuple[float, float] | None = None  # (elapsed, cumulative J)
        self._step_mark: float | None = None
        self._global_step = 0
        self._next_epoch = 0
        self.prediction_kwh: float | None = None
        if self.planned is not None:
            sink.set_tags(keys.prediction_tags(self.planned))

    def _reading(self) -> tuple[float, float]:
        elapsed = self.tracker.sample()
        energy, _ = self.tracker.energy_at(elapsed)
        return elapsed, energy.total_j

    @property
    def last_end(self) -> tuple[float, float]:
        """(elapsed s, energy so far J) as read when the last epoch ended."""
        return self._last_end

    def start_epoch(self) -> None:
        self._start = self._reading()
        self._step_mark = self._start[1]

    def end_epoch(self, epoch: int | None = None) -> float:
        """Close the current epoch (or, if none was started, the time since the last one ended
        or since tracking began); returns its energy in joules."""
        end = self._reading()
        start = self._start
        if start is None:
            start = (0.0, 0.0) if not self.epoch_duration_s else self._last_end
        epoch = self._next_epoch if epoch is None else int(epoch)
        self._next_epoch = epoch + 1
        e_j, d_s = end[1] - start[1], end[0] - start[0]
        self.epoch_energy_j.append(e_j)
        self.epoch_duration_s.append(d_s)
        self._last_end = end
        self._start = None
        cumulative = sum(self.epoch_energy_j)
        metrics = keys.epoch_metrics(e_j, d_s, end[1], self.carbon)
        done = len(self.epoch_energy_j)
        if self.planned is not None and done >= self.warmup:
            left = max(0, self.planned - done)
            mean_j = cumulative / done
            mean_s = sum(self.epoch_duration_s) / done
            total_j = end[1] + mean_j * left
            self.prediction_kwh = kwh(total_j)
            metrics.update(keys.prediction_metrics(total_j, end[0] + mean_s * left, self.carbon))
        self.sink.log_metrics(metrics, step=epoch)
        return e_j

    @contextlib.contextmanager
    def epoch(self, epoch: int | None = None) -> Iterator[None]:
        self.start_epoch()
        try:
            yield
        finally:
            self.end_epoch(epoch)

    def step(self, step: int | None = None) -> float:
        """Log the energy since the previous step (or epoch start); returns joules."""
        elapsed, cum = self._reading()
        mark = self._step_mark if self._step_mark is not None else 0.0
        self._step_mark = cum
        self._global_step = self._global_step + 1 if step is None else int(step)
        self.sink.log_metrics(keys.step_metrics(cum - mark), step=self._global_step)
        return cum - mark
