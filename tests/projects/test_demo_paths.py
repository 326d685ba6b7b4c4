"""The demo finds projects/segmentation from any working directory (the browser test and
scripts/ui_screenshots.py start it from a temp dir)."""

from support.paths import REPO

from mlflow_wattsup.projects.demo import project_dir


def test_project_dir_from_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert project_dir() == REPO / "projects" / "segmentation"
