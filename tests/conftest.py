import os

import pytest

# MLflow phones home (usage telemetry) unless told not to; tests never use the network.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
for var in (
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "WATTSUP_RUN_ID",
    "WATTSUP_AUTOLOG",  # a developer's own setting would measure every fluent run of the tests
    "WATTSUP_REGION",
    "WATTSUP_CARBON_INTENSITY",
    "WATTSUP_PUE",
    "WATTSUP_CPU_TDP_W",
    "WATTSUP_CPU_W_PER_THREAD",
    "WATTSUP_POWERCAP_ROOT",
    "CUDA_VISIBLE_DEVICES",
):
    os.environ.pop(var, None)


@pytest.fixture(scope="session")
def tracking_db(tmp_path_factory):
    """One real sqlite tracking store for the session (creating one costs seconds)."""
    d = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{d}/mlflow.db"


@pytest.fixture
def tracking_uri(tracking_db, monkeypatch, tmp_path):
    """The session store as the current tracking URI, a fresh experiment name, a private spool."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_db)
    monkeypatch.setenv("WATTSUP_SPOOL_DIR", str(tmp_path / "spool"))
    # mlflow.set_experiment (called by MLflow's fluent API, Lightning's logger, ...) sets
    # MLFLOW_EXPERIMENT_ID in os.environ; it would leak into the next test's `mlflow run`: made
    # absent now and again after the test (setenv records "absent" for the restore)
    for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "WATTSUP_RUN_ID"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    mlflow.set_tracking_uri(tracking_db)
    yield tracking_db
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def experiment(request):
    return f"exp-{request.node.name}"[:200]


@pytest.fixture
def client(tracking_uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri)


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """A real ``mlflow server`` (a sqlite store behind it) for one test module, stopped by PID.
    Modules that need another (on a SLURM node, one to kill) define their own."""
    from support.server import MlflowServer

    s = MlflowServer(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    s.start()
    yield s
    s.stop()


@pytest.fixture
def mlflow_client(server):
    """An ``MlflowClient`` of :func:`server`, for checking what reached it."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(server.uri)
