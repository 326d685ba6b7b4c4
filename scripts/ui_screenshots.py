"""Screenshots of what a user sees of our runs in the MLflow UI (headless Chromium).

    python scripts/ui_screenshots.py --out ui-screenshots            # makes demo runs first
    python scripts/ui_screenshots.py --store sqlite:///mlflow.db --experiment wattsup-demo

Without ``--store``, the demo's pipelines make the runs in a temporary sqlite store
(``python -m mlflow_wattsup.projects.demo --epochs 1``: classical, a one-epoch
FastSurferCNN training and its inference, about a minute on 2 cores). Then a real
``mlflow server`` serves the store and Chromium, driven over the DevTools protocol
(``tests/support/browser.py``), saves:

  runs-table.png   the experiment's runs table, in our saved view (energy, carbon, Dice columns)
  run-overview.png a run's Overview: description, datasets, metrics
  parent.png       the demo's parent run: the comparison table of its children
  compare.png      MLflow's compare view of the children
  report-html.png  the parent's artifact wattsup/report.html in MLflow's artifact viewer
  system-metrics.png  an autologged run's System metrics tab: our power and energy charts beside
                   MLflow's own system metrics (a user's script under ``WATTSUP_AUTOLOG=1``)
  models.png       that experiment's Models page, scrolled to the logged model's energy

The browser test (tests/integration/test_browser.py) uses the same functions. MLflow's assistant panel
(which opens itself on first load, taking a third of the width) is closed for the screenshots
through local storage, as a user closing it once would; nothing else is preset: the training
view comes from the links' ``workflowType`` parameter alone.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from support.browser import Chromium, find_chromium  # noqa: E402

BIN = Path(sys.executable).parent
EXPERIMENT = "wattsup-ui"
#: what a user who closed MLflow's assistant panel once has in local storage (3.17's keys)
CLOSE_ASSISTANT = (
    "try { localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
    " localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false'); } catch (e) {}"
)


def env_for(store: str, workdir: Path, experiment: str | None = None) -> dict[str, str]:
    env = dict(os.environ, MLFLOW_TRACKING_URI=store, MLFLOW_DISABLE_TELEMETRY="true")
    env["WATTSUP_SPOOL_DIR"] = str(workdir / "spool")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.pop("MLFLOW_RUN_ID", None)
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    if experiment:
        env["MLFLOW_EXPERIMENT_NAME"] = experiment
    return env


def init_store(store: str) -> None:
    """Create the store's tables now, so that a server and a writer starting together do not race."""
    from mlflow.tracking import MlflowClient

    MlflowClient(store).search_experiments(max_results=1)


def start_demo(store: str, workdir: Path, epochs: int = 1, experiment: str = EXPERIMENT) -> subprocess.Popen:
    """The demo's pipelines, as a user starts the demo outside ``mlflow run``."""
    cmd = [sys.executable, "-m", "mlflow_wattsup.projects.demo", "--epochs", str(epochs)]
    log = open(workdir / "demo.log", "wb")
    return subprocess.Popen(
        cmd, cwd=workdir, env=env_for(store, workdir, experiment), stdout=log, stderr=subprocess.STDOUT
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` on 127.0.0.1 serving ``store`` (artifacts read where the runs wrote them)."""

    def __init__(self, store: str, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", store]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env_for(store, workdir),
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait(self, timeout_s: float = 120) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer /health in {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def demo_runs(store: str, experiment: str):
    """(experiment id, parent run, child runs oldest first) of the latest demo in ``experiment``."""
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.report.parent_note import children

    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} in {store}")
    parents = client.search_runs(
        [exp.experiment_id], "tags.`wattsup.pipeline` = 'demo'", order_by=["attributes.start_time DESC"]
    )
    if not parents:
        raise SystemExit(f"no demo run in {experiment!r}")
    return exp.experiment_id, parents[0], children(client, parents[0].info.run_id, exp.experiment_id)


def pages(base: str, experiment_id: str, parent, kids) -> dict[str, str]:
    """The addresses a user opens, as we print and write them."""
    from mlflow_wattsup.report.links import compare_url, experiment_url, run_url

    first = next((k for k in kids if k.data.tags.get("wattsup.pipeline") == "gmm-classical"), kids[0])
    return {
        "runs-table": experiment_url(base, experiment_id, view=True),
        "run-overview": run_url(base, experiment_id, first.info.run_id),
        "parent": run_url(base, experiment_id, parent.info.run_id),
        "compare": compare_url(base, experiment_id, [k.info.run_id for k in kids]),
        "report-html": run_url(base, experiment_id, parent.info.run_id).replace(
            "?workflowType", "/artifacts/wattsup/report.html?workflowType"
        ),
    }


#: text each page shows once rendered (what the screenshot waits for)
def ready_text(name: str, parent, kids) -> list[str]:
    return {
        "runs-table": ["energy_kwh", "Dataset", "mni152-2009"],
        "run-overview": ["Description", "CO2eq", "mni152-2009"],
        "parent": ["Description", "in all", "gmm-classical"],
        "compare": ["energy_kwh", "carbon_g", "dice_mean"],
        "report-html": ["report.html"],
    }[name]


def screenshots(
    base: str, experiment_id: str, parent, kids, out: Path, chromium: str | None = None
) -> list[Path]:
    binary = chromium or find_chromium()
    if binary is None:
        raise SystemExit("Chromium not found: apt-get install chromium (or set WATTSUP_CHROMIUM)")
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    heights = {"run-overview": 1500, "parent": 1400, "compare": 2000}
    for name, url in pages(base, experiment_id, parent, kids).items():
        with Chromium(binary, 1600, heights.get(name, 1000), init_script=CLOSE_ASSISTANT) as b:
            b.goto(url)
            b.wait_for(*ready_text(name, parent, kids), timeout_s=120, settle_s=3)
            if name == "parent":
                b.click_text("Show more")  # the description is folded after a few lines
                time.sleep(1)
            saved.append(b.screenshot(out / f"{name}.png"))
            print(f"{out / f'{name}.png'}: {url}")
    return saved


# -- an autologged run (WATTSUP_AUTOLOG=1): the System metrics tab and the Models page -----------

AUTOLOG_EXPERIMENT = "wattsup-ui-autolog"
#: a user's training script that has never heard of wattsup, with MLflow's system metrics on
AUTOLOG_SCRIPT = """\
import time
import mlflow
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

X, y = load_iris(return_X_y=True)

def busy(cpu_s):
    t = time.process_time()
    while time.process_time() - t < cpu_s:
        sum(range(1000))

with mlflow.start_run(run_name="logistic regression", log_system_metrics=True):
    for epoch in range(4):
        busy(1.5)
        mlflow.log_metric("loss", 1.0 / (epoch + 1), step=epoch)
    model = LogisticRegression(max_iter=300).fit(X, y)
    mlflow.sklearn.log_model(model, name="classifier")
    time.sleep(2)
"""


def start_autolog_script(store: str, workdir: Path, experiment: str = AUTOLOG_EXPERIMENT) -> subprocess.Popen:
    """``WATTSUP_AUTOLOG=1 python train.py`` (:data:`AUTOLOG_SCRIPT`), MLflow's system metrics
    sampled every second."""
    script = workdir / "train.py"
    script.write_text(AUTOLOG_SCRIPT)
    env = env_for(store, workdir, experiment)
    env.update(WATTSUP_AUTOLOG="1", MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1")
    log = open(workdir / "autolog.log", "wb")
    return subprocess.Popen(
        [sys.executable, str(script)], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def autolog_run(store: str, experiment: str = AUTOLOG_EXPERIMENT):
    """(experiment id, the latest run, its logged model) of the autologged script."""
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} in {store}")
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0]
    mlflow.set_tracking_uri(store)
    [model] = mlflow.search_logged_models(
        experiment_ids=[exp.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
        output_format="list",
    )
    return exp.experiment_id, run, model


def autolog_pages(base: str, experiment_id: str, run) -> dict[str, str]:
    from mlflow_wattsup.report.links import TRAINING_VIEW

    exp = f"{base}/#/experiments/{experiment_id}"
    return {
        "system-metrics": f"{exp}/runs/{run.info.run_id}/system-metrics?{TRAINING_VIEW}",
        "models": f"{exp}/models?{TRAINING_VIEW}",
    }


#: scroll the page's scrolling panel down by most of its height; false at the bottom
SCROLL_DOWN = """(() => {
  const panes = [...document.querySelectorAll('*')].filter(e => e.scrollHeight > e.clientHeight + 50
    && ['auto', 'scroll'].includes(getComputedStyle(e).overflowY));
  const pane = panes.sort((a, b) => b.scrollHeight - a.scrollHeight)[0];
  if (!pane || pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 2) return false;
  pane.scrollTop += pane.clientHeight * 0.8;
  return true;
})()"""


def show_power_chart(browser, key: str = "system/wattsup_power_w", timeout_s: float = 60) -> str:
    """Scroll the System metrics tab (its charts render once in view) down to the chart of ``key``;
    returns the text seen on the way down: each chart drawn with data shows its legend, ``<run>
    (<key>)``."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen.append(browser.text())
        if f"({key})" in seen[-1]:
            break
        if not browser.evaluate(SCROLL_DOWN):
            time.sleep(1)
    return "\n".join(seen)


def show_model_energy(browser, key: str = "energy_kwh", timeout_s: float = 60) -> str | None:
    """Scroll the Models table (a wide grid: each metric of each dataset is a column) until the
    ``key`` column is in view, left of the viewport; returns the first row's cell text in it."""
    find = (
        "(() => { const h = [...document.querySelectorAll('.ag-header-cell')]"
        f".find(e => e.innerText.trim() === {key!r}); if (!h) return null;"
        " const col = h.getAttribute('aria-colindex');"
        " const v = document.querySelector('.ag-body-horizontal-scroll-viewport');"
        " v.scrollLeft = Math.max(0, parseFloat(h.style.left || '0') - 200);"
        " const c = document.querySelector(`.ag-row .ag-cell[aria-colindex='${col}']`);"
        " return c ? c.innerText : ''; })()"
    )
    deadline = time.monotonic() + timeout_s
    left = 0
    while time.monotonic() < deadline:
        if browser.evaluate(find) is not None:  # the column's header is in view: now its cells
            time.sleep(1)
            return browser.evaluate(find)
        left += 600
        browser.evaluate(f"document.querySelector('.ag-body-horizontal-scroll-viewport').scrollLeft = {left}")
        time.sleep(0.5)
        if left > 20000:
            left = 0
    return None


def autolog_screenshots(
    base: str, experiment_id: str, run, out: Path, chromium: str | None = None
) -> list[Path]:
    binary = chromium or find_chromium()
    if binary is None:
        raise SystemExit("Chromium not found: apt-get install chromium (or set WATTSUP_CHROMIUM)")
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    for name, url in autolog_pages(base, experiment_id, run).items():
        with Chromium(
            binary, 1600, 1500 if name == "system-metrics" else 600, init_script=CLOSE_ASSISTANT
        ) as b:
            b.goto(url)
            if name == "system-metrics":
                b.wait_for("cpu_utilization_percentage", timeout_s=120, settle_s=3)
                show_power_chart(b)
            else:
                b.wait_for("Source run", run.info.run_name, timeout_s=120, settle_s=3)
                show_model_energy(b)
            time.sleep(2)
            saved.append(b.screenshot(out / f"{name}.png"))
            print(f"{out / f'{name}.png'}: {url}")
    return saved


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="ui-screenshots", help="folder for the PNGs")
    p.add_argument("--store", help="tracking store to show (default: make demo runs in a temporary one)")
    p.add_argument("--experiment", default=EXPERIMENT)
    p.add_argument("--epochs", type=int, default=1, help="training epochs of the demo runs made")
    p.add_argument(
        "--autolog-experiment",
        help="with --store: an experiment of autologged runs to show (System metrics tab, Models page)",
    )
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wattsup-ui-") as tmp:
        work = Path(tmp)
        store = args.store or f"sqlite:///{work}/mlflow.db"
        init_store(store)
        server = Server(store, work)
        try:
            if not args.store:
                demo = start_demo(store, work, args.epochs, args.experiment)
                if demo.wait() != 0:
                    print((work / "demo.log").read_text()[-3000:], file=sys.stderr)
                    return 1
                if start_autolog_script(store, work).wait() != 0:
                    print((work / "autolog.log").read_text()[-3000:], file=sys.stderr)
                    return 1
            server.wait()
            exp_id, parent, kids = demo_runs(store, args.experiment)
            screenshots(server.url, exp_id, parent, kids, Path(args.out))
            if not args.store or args.autolog_experiment:
                exp_id, run, _ = autolog_run(store, args.autolog_experiment or AUTOLOG_EXPERIMENT)
                autolog_screenshots(server.url, exp_id, run, Path(args.out))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
