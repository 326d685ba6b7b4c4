"""No network: tracking, import, report and the demo connect to nothing but the tracking URI.

Every Python process these tests start loads tests/support/netguard/sitecustomize.py, which refuses and
records any other connection or DNS lookup."""

import subprocess
import sys

from support.helpers import WATTSUP, guarded_env
from support.paths import SHARED
from support.server import MlflowServer


def run(cmd, env, cwd=None, timeout=300):
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_guard_itself_blocks_and_records(tmp_path):
    env, log = guarded_env(tmp_path)
    code = (
        "import urllib.request\ntry:\n    urllib.request.urlopen('http://example.com', timeout=2)\n"
        "except OSError as e:\n    print('blocked', e)"
    )
    r = run([sys.executable, "-c", code], env)
    assert "blocked" in r.stdout and "resolve example.com" in log.read_text()


def test_tracking_import_and_report_touch_only_the_tracking_server(tmp_path, experiment):
    srv = MlflowServer(tmp_path / "srv")
    srv.start()
    try:
        env, log = guarded_env(tmp_path, [srv.port], MLFLOW_TRACKING_URI=srv.uri)
        r = run(
            [
                *WATTSUP,
                "run",
                "--experiment",
                experiment,
                "--region",
                "FRA",
                "--",
                sys.executable,
                "-c",
                "sum(range(10**6))",
            ],
            env,
        )
        assert r.returncode == 0, r.stderr
        code = (
            f"import mlflow_wattsup\nwith mlflow_wattsup.track(experiment={experiment!r}) as t:\n"
            "    with t.stage('a'):\n        sum(range(10**6))\n"
        )
        r = run([sys.executable, "-c", code], env)
        assert r.returncode == 0, r.stderr
        fixtures = SHARED / "fixtures" / "eit-logs" / "FastSurfer_CC_gpu_test"
        if fixtures.is_dir():
            r = run([*WATTSUP, "import", "eit", str(fixtures), "--experiment", experiment + "-eit"], env)
            assert r.returncode == 0, r.stderr
        r = run([*WATTSUP, "report", experiment], env)
        assert r.returncode == 0, r.stderr
        assert not log.exists(), log.read_text()
    finally:
        srv.stop()


# The demo runs under this guard in test_projects.py::test_demo_runs_pipelines_and_prints_table.
