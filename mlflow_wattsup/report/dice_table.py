"""The long per-label Dice table (:mod:`mlflow_wattsup.analysis.dice_table`) read back from runs,
and written as CSV or parquet.

Per run, the scores come from its ``wattsup/<prefix>.csv`` artifacts (label ID, name, Dice: what
``log_dice`` writes), else from its ``<prefix>/<name>`` metrics (then without label IDs). Who the
run is comes from its tags: ``wattsup.study``, ``wattsup.subject``, ``wattsup.pipeline``,
``wattsup.device`` and the swept values ``wattsup.sweep.<name>``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from mlflow_wattsup.analysis.dice_table import (
    RunScores,
    dice_prefixes,
    long_rows,
    scores_from_csv,
    scores_from_metrics,
)
from mlflow_wattsup.report.table import csv_text
from mlflow_wattsup.sink import keys


def to_csv(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """CSV text; None becomes an empty field, Dice keeps full precision."""
    cells = [["" if v is None else repr(v) if isinstance(v, float) else v for v in row] for row in rows]
    return csv_text(header, cells, newline="\n")


#: MLflow's switch for its artifact download progress bar
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
#: the table's file formats, by file suffix
FORMATS = (".csv", ".parquet")


def run_scores(run, read_artifact: Callable[[str, str], str | None]) -> RunScores | None:
    """The scores of an MLflow ``Run`` (None when it logged no Dice); ``read_artifact(run_id,
    path)`` returns an artifact's text or None."""
    m, t = run.data.metrics, run.data.tags
    prefixes = dice_prefixes(m)
    if not prefixes:
        return None
    ident = {
        "run_id": run.info.run_id,
        "study": t.get(keys.STUDY, ""),
        "subject": t.get(keys.SUBJECT, ""),
        "pipeline": t.get(keys.PIPELINE, ""),
        "device": t.get(keys.DEVICE, ""),
    }
    scores = []
    for prefix in prefixes:
        text = read_artifact(run.info.run_id, f"wattsup/{prefix}.csv")
        found = scores_from_csv(text, prefix) if text else []
        scores += found or scores_from_metrics(m, prefix)
    return RunScores(ident, keys.swept_values(t), scores)


def artifact_reader(tracking_uri: str | None) -> Callable[[str, str], str | None]:
    """``read(run_id, path)``: an artifact's text, None when the run has no such artifact."""

    def read(run_id: str, path: str) -> str | None:
        import mlflow.artifacts

        old = os.environ.get(PROGRESS_BAR)
        os.environ[PROGRESS_BAR] = "false"  # one small file per run: no progress bar line for each
        try:
            with tempfile.TemporaryDirectory(prefix="wattsup-dice-") as tmp:
                local = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path=path, dst_path=tmp, tracking_uri=tracking_uri
                )
                return Path(local).read_text(encoding="utf-8")
        except Exception:  # no such artifact (an older run, or one scored elsewhere)
            return None
        finally:
            if old is None:
                os.environ.pop(PROGRESS_BAR, None)
            else:
                os.environ[PROGRESS_BAR] = old

    return read


def from_runs(runs: Sequence, tracking_uri: str | None = None) -> tuple[list[str], list[list]]:
    """(header, rows) of the long table over MLflow ``Run`` objects (runs without Dice left out)."""
    read = artifact_reader(tracking_uri)
    scored = [s for r in runs if (s := run_scores(r, read)) is not None]
    scored.sort(key=_order)
    return long_rows(scored)


def _number_first(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _order(s: RunScores) -> tuple:
    """Study, pipeline, swept values (numbers numerically), device, subject, run."""
    i = s.ident
    swept = tuple(_number_first(v) for _, v in sorted(s.swept.items()))
    return (
        i.get("study", ""),
        i.get("pipeline", ""),
        swept,
        i.get("device", ""),
        i.get("subject", ""),
        i["run_id"],
    )


def search(client, experiment_ids: Sequence[str], filter_string: str = "") -> list:
    """Every active run of the experiments matching ``filter_string`` (all pages)."""
    out, token = [], None
    while True:
        page = client.search_runs(list(experiment_ids), filter_string, max_results=1000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def write(path: str | Path, header: Sequence[str], rows: Sequence[Sequence]) -> Path:
    """Write the table as CSV or parquet (by ``path``'s suffix). Parquet keeps the types: ``label``
    a nullable integer, ``dice`` a float, the others strings."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"{path}: the Dice table is written as .csv or .parquet, not {suffix or 'no suffix'}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        path.write_text(to_csv(header, rows), encoding="utf-8")
        return path
    import pandas as pd

    df = pd.DataFrame([list(r) for r in rows], columns=list(header))
    for col in header:
        if col == "label":
            df[col] = df[col].astype("Int64")
        elif col == "dice":
            df[col] = df[col].astype("float64")
        else:
            df[col] = df[col].astype("string")
    df.to_parquet(path, index=False)
    return path
