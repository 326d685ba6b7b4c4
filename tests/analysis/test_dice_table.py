"""The long per-label Dice table's rows (pure)."""

import numpy as np

from mlflow_wattsup.analysis.dice import dice
from mlflow_wattsup.analysis.dice_table import (
    RunScores,
    Score,
    dice_prefixes,
    long_rows,
    scores_from_csv,
    scores_from_metrics,
)
from mlflow_wattsup.report.dice_table import to_csv


def test_scores_round_trip_through_the_dice_artifact():
    pred = np.array([[[17, 17, 53, 0]]])
    ref = np.array([[[17, 53, 53, 0]]])
    result = dice(pred, ref)  # FreeSurfer IDs, built-in names
    scores = scores_from_csv(result.to_csv())
    assert scores == [
        Score("dice", 17, "Left-Hippocampus", 2 / 3),
        Score("dice", 53, "Right-Hippocampus", 2 / 3),
    ]
    m = {"dice/Left-Hippocampus": 0.5, "dice_mean": 0.5, "dice_labels_n": 1, "dice_aseg_labels_n": 0}
    assert scores_from_metrics(m) == [Score("dice", None, "Left-Hippocampus", 0.5)]
    assert dice_prefixes(m) == ["dice", "dice_aseg"]


def test_long_rows_one_per_run_and_label_with_swept_columns():
    a = RunScores(
        {"run_id": "r1", "study": "s", "subject": "sub-01", "pipeline": "bet", "device": "cpu"},
        {"prune": "0.5"},
        [Score("dice", 1, "brain", 0.9)],
    )
    b = RunScores(
        {"run_id": "r2", "subject": "sub-02", "pipeline": "seg", "device": "gpu"},
        {"device": "x"},  # a swept name that is also a column
        [Score("dice", 17, "Left-Hippocampus", 0.8), Score("dice_aseg", 3, "Left-Cerebral-Cortex", 0.7)],
    )
    header, rows = long_rows([a, b])
    assert header == [
        "run_id",
        "study",
        "subject",
        "pipeline",
        "sweep_device",
        "prune",
        "device",
        "prefix",
        "label",
        "name",
        "dice",
    ]
    assert rows == [
        ["r1", "s", "sub-01", "bet", None, "0.5", "cpu", "dice", 1, "brain", 0.9],
        ["r2", None, "sub-02", "seg", "x", None, "gpu", "dice", 17, "Left-Hippocampus", 0.8],
        ["r2", None, "sub-02", "seg", "x", None, "gpu", "dice_aseg", 3, "Left-Cerebral-Cortex", 0.7],
    ]
    text = to_csv(header, rows)
    assert text.splitlines()[1] == "r1,s,sub-01,bet,,0.5,cpu,dice,1,brain,0.9"
