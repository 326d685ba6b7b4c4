"""The cost of a measured run on the MLflow 3 models it logged (``LoggedModel``: the experiment's
Models tab, ``mlflow.search_logged_models``).

A model gets the run's cost **from the run's start to the model's creation** (its
``creation_timestamp``, set when ``mlflow.<flavor>.log_model`` begins): energy (and its CPU, GPU,
RAM parts), carbon, duration, CPU time and mean power, under the run's own metric names with
``model_id=``, so ``search_logged_models(filter_string="metrics.energy_kwh < 0.1")`` finds it. A
run that logs several models (checkpoints) gives each the cost of the work that produced it; what
the run did after (evaluation, later epochs) is on the run, not on the model. The run's model-cost
metrics (``params``, ``flops``... from ``log_model_cost``) are copied as they are. The model's
tags say which span of which run the figures cover, the carbon intensity and PUE applied, and how
the energy was obtained (``wattsup.source.*``).

MLflow keeps a model's metrics as metrics of the run that logged them too: the run's history of
``energy_kwh`` gains one point per model, at the model's creation time; the run's own value (the
latest) stays its total, logged at its end.
"""

from __future__ import annotations

from collections.abc import Mapping

from mlflow_wattsup.analysis.carbon import CarbonConfig
from mlflow_wattsup.sink import keys
from mlflow_wattsup.tracking.tracker import Tracker


def log_model_costs(
    client,
    run_id: str,
    experiment_id: str,
    tracker: Tracker,
    start_wall_s: float,
    end_s: float,
    carbon: CarbonConfig,
    source: Mapping[str, str],
) -> list[str]:
    """Give every model ``run_id`` logged while ``tracker`` measured it (from ``start_wall_s``,
    epoch seconds, for ``end_s`` seconds) its cost up to its creation; returns the model ids costed.
    A model that already has our cost (costed in an earlier session of a resumed run) is left as it
    is. (``log_model`` itself links the run's step-0 metrics to the model: a run's totals that
    already exist when it logs a model -- an earlier session's -- are superseded by ours, which
    are newer.)"""
    from mlflow.entities import Metric

    models = list(_models_of(client, experiment_id, run_id))
    if not models:
        return []
    metrics = client.get_run(run_id).data.metrics
    copied = {k: v for k, v in metrics.items() if k in keys.MODEL_COST_METRICS}
    done = []
    for model in models:
        if keys.MODEL_BASIS in (model.tags or {}):
            continue
        at_s = model.creation_timestamp / 1000 - start_wall_s
        if not 0 <= at_s <= end_s + 1:  # not made while we measured
            continue
        energy, cpu_s = tracker.energy_at(at_s)
        values = {**keys.run_metrics(at_s, energy, carbon, cpu_time_s=cpu_s), **copied}
        ts = model.creation_timestamp
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), ts, 0, model_id=model.model_id) for k, v in values.items()],
        )
        client.set_logged_model_tags(model.model_id, {**source, **keys.model_basis_tag(run_id, at_s, carbon)})
        done.append(model.model_id)
    return done


def _models_of(client, experiment_id: str, run_id: str):
    token = None
    while True:
        page = client.search_logged_models(
            experiment_ids=[experiment_id],
            filter_string=f"source_run_id = '{run_id}'",
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return
