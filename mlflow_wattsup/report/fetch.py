"""The runs a report needs, as :class:`~.model.RunRow`: from a tracking store (a fast read of
MLflow's SQL tables, else ``search_runs`` page by page) or from a ``search_runs`` DataFrame.

The only part of the report that talks to MLflow; it imports MLflow when a fetch is made."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mlflow_wattsup.report.aggregate import NEEDED_METRICS
from mlflow_wattsup.report.model import RunRow
from mlflow_wattsup.sink import keys

#: the params the report reads (``fetch_runs`` asks only for these, the metrics of NEEDED_METRICS
#: and the tags starting with ``wattsup.``)
NEEDED_PARAMS = (keys.PUE, keys.CARBON_INTENSITY)


def rows_from_dataframe(df) -> list[RunRow]:
    """RunRows from a ``mlflow.search_runs`` DataFrame (``metrics.*``, ``tags.*``, ``params.*``)."""
    out = []
    records = df.to_dict("records")
    for rec in records:
        row = RunRow(str(rec.get("run_id", "")))
        for col, value in rec.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if col.startswith("metrics."):
                row.metrics[col[8:]] = float(value)
            elif col.startswith("tags."):
                row.tags[col[5:]] = str(value)
            elif col.startswith("params."):
                row.params[col[7:]] = str(value)
        out.append(row)
    return out


def fetch_runs(
    experiment_names: Sequence[str] | None = None,
    filter_string: str = "",
    tracking_uri: str | None = None,
    experiment_ids: Sequence[str] | None = None,
    page_size: int = 1000,
    fast: bool = True,
) -> list[RunRow]:
    """The active runs of the experiments, with only what the report needs.

    Without a filter, on a database store (sqlite, PostgreSQL, MySQL), three column-restricted
    queries read the latest metric values, tags and params of every run (the values
    ``search_runs`` would return, without building full Run objects: 10,000 runs take seconds,
    not tens). Otherwise, or if that fails, ``search_runs`` page by page.
    """
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.sink.transport import Store

    store = Store(MlflowClient(tracking_uri))
    ids = list(experiment_ids or []) + store.experiment_ids(experiment_names or [])
    if not ids:
        raise ValueError("give at least one experiment")
    if fast and not filter_string.strip():
        rows = _fetch_sql(store.client, ids)
        if rows is not None:
            return rows
    return [run_row(r) for r in store.search_runs(ids, filter_string, page_size=page_size)]


def run_row(run) -> RunRow:
    """What the report needs of an MLflow ``Run``: the metrics of NEEDED_METRICS, the tags
    starting with ``wattsup.``, the params of NEEDED_PARAMS."""
    d = run.data
    return RunRow(
        run.info.run_id,
        {k: v for k, v in d.metrics.items() if k in NEEDED_METRICS},
        {k: v for k, v in d.tags.items() if k.startswith(keys.PREFIX)},
        {k: v for k, v in d.params.items() if k in NEEDED_PARAMS},
    )


def _fetch_sql(client, experiment_ids: Sequence[str]) -> list[RunRow] | None:
    """Read straight from MLflow's SQL tables; None when the store is not SQL or this fails."""
    try:
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlRun, SqlTag
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store
        if not isinstance(store, SqlAlchemyStore):
            return None
        ids = [int(i) for i in experiment_ids]
        with store.ManagedSessionMaker() as session:
            live = session.query(SqlRun.run_uuid).filter(
                SqlRun.experiment_id.in_(ids), SqlRun.lifecycle_stage == "active"
            )
            rows = {rid: RunRow(rid) for (rid,) in live}
            metrics = (
                session.query(
                    SqlLatestMetric.run_uuid,
                    SqlLatestMetric.key,
                    SqlLatestMetric.value,
                    SqlLatestMetric.is_nan,
                )
                .join(SqlRun, SqlRun.run_uuid == SqlLatestMetric.run_uuid)
                .filter(SqlRun.experiment_id.in_(ids), SqlLatestMetric.key.in_(NEEDED_METRICS))
            )
            for rid, key, value, is_nan in metrics:
                if rid in rows and not is_nan:
                    rows[rid].metrics[key] = float(value)
            tags = (
                session.query(SqlTag.run_uuid, SqlTag.key, SqlTag.value)
                .join(SqlRun, SqlRun.run_uuid == SqlTag.run_uuid)
                .filter(SqlRun.experiment_id.in_(ids), SqlTag.key.like(keys.PREFIX + "%"))
            )
            for rid, key, value in tags:
                if rid in rows:
                    rows[rid].tags[key] = value
            params = (
                session.query(SqlParam.run_uuid, SqlParam.key, SqlParam.value)
                .join(SqlRun, SqlRun.run_uuid == SqlParam.run_uuid)
                .filter(SqlRun.experiment_id.in_(ids), SqlParam.key.in_(NEEDED_PARAMS))
            )
            for rid, key, value in params:
                if rid in rows:
                    rows[rid].params[key] = value
        return list(rows.values())
    except Exception:  # an MLflow whose tables differ: use the public API
        return None
