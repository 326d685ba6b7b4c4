"""Our runs in the real MLflow UI: the demo's pipelines (one training epoch) write to a sqlite
store, a real `mlflow server` serves it, headless Chromium loads the pages we link to, as a
user opening them would (fresh profile: MLflow's own default is the GenAI view).

Skips only where no Chromium is installed (`.ci/run` installs Debian's `chromium`).
Screenshots of the same pages: `python scripts/ui_screenshots.py`.
"""

import sys
import time

import pytest
from support.paths import REPO

sys.path.insert(0, str(REPO / "scripts"))

import ui_screenshots as ui  # noqa: E402
from support.browser import Chromium, find_chromium  # noqa: E402

pytestmark = pytest.mark.slow
CHROMIUM = find_chromium()
if CHROMIUM is None:
    pytest.skip("Chromium is not installed (apt-get install chromium; .ci/run does)", allow_module_level=True)


def training_view(text: str) -> bool:
    """The experiment sidebar of MLflow 3.17's model-training view (Runs, Models, Model registry),
    not the GenAI one (Overview, Observability, Sessions, Evaluation...)."""
    return "Model registry" in text and "Observability" not in text


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    work = tmp_path_factory.mktemp("ui")
    store = f"sqlite:///{work}/mlflow.db"
    ui.init_store(store)
    server = ui.Server(store, work)  # starts while the demo runs: both take tens of seconds
    try:
        demo = ui.start_demo(store, work, epochs=1)
        assert demo.wait(timeout=900) == 0, (work / "demo.log").read_text()[-3000:]
        server.wait()
        exp_id, parent, kids = ui.demo_runs(store, ui.EXPERIMENT)
        yield {
            "base": server.url,
            "exp_id": exp_id,
            "parent": parent,
            "kids": kids,
            "pages": ui.pages(server.url, exp_id, parent, kids),
            "demo_log": (work / "demo.log").read_text(),
            "store": store,
            "work": work,
        }
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser():
    with Chromium(CHROMIUM, 1600, 1200) as b:
        yield b


def test_demo_made_named_runs_and_printed_training_view_links(site):
    names = [k.info.run_name for k in site["kids"]]
    assert names == ["classical: Gaussian mixture", "FastSurferCNN train (1 epoch)", "FastSurferCNN infer"]
    assert site["parent"].info.run_name == "demo: classical vs FastSurferCNN, MNI152 2 mm"
    log = site["demo_log"]
    assert "workflowType=machine_learning" in log and "viewStateShareKey=wattsup" in log


def test_runs_table_opens_in_training_view_with_energy_and_datasets(site, browser):
    browser.goto(site["pages"]["runs-table"])
    text = browser.wait_for("energy_kwh", "carbon_g", "dice_mean", "mni152-2009-2mm", timeout_s=120)
    assert training_view(text), text[:800]
    for kid in site["kids"]:  # our view sorts by energy: child runs listed, not folded under the parent
        assert kid.info.run_name in text


def test_run_overview_shows_description_and_datasets(site, browser):
    run = next(k for k in site["kids"] if k.data.tags["wattsup.pipeline"] == "gmm-classical")
    note = run.data.tags["mlflow.note.content"]
    first = note.splitlines()[0].strip("*").split("**")[0]  # "0.0058 Wh (estimated) · ... · 16.2 s"
    browser.goto(site["pages"]["run-overview"])
    text = browser.wait_for("Description", "Datasets", timeout_s=120)
    assert training_view(text), text[:800]
    assert first in text  # the description's first line, rendered
    assert "mni152-2009-2mm" in text and "<!--" not in text  # dataset shown, our marker hidden
    assert ("estimated" in first) == ("estimate" in run.data.tags["wattsup.source.cpu"])


def test_parent_overview_compares_its_children(site, browser):
    browser.goto(site["pages"]["parent"])
    text = browser.wait_for("Description", "in all", timeout_s=120)
    assert training_view(text)
    browser.click_text("Show more")
    time.sleep(1)
    text = browser.text()
    for pipeline in ("gmm-classical", "fastsurfercnn-train", "fastsurfercnn-infer"):
        assert pipeline in text
    assert "Compare them in MLflow" in text


def test_compare_view_lists_our_metrics(site, browser):
    browser.goto(site["pages"]["compare"])
    text = browser.wait_for("Comparing 3 Runs", "energy_kwh", timeout_s=120)
    # the metrics table renders the rows in view (alphabetical): energy, carbon, Dice, runtime
    for key in ("carbon_g", "cpu_time_s", "dice_mean", "duration_s", "energy_cpu_kwh"):
        assert key in text
    for kid in site["kids"]:
        assert kid.info.run_name in text


def test_report_artifact_is_rendered_as_a_page(site, browser):
    browser.goto(site["pages"]["report-html"])
    browser.wait_for("report.html", timeout_s=120)
    # MLflow shows an HTML artifact in a sandboxed iframe loaded from a blob: read what it loaded
    deadline = time.monotonic() + 60
    page = ""
    while time.monotonic() < deadline and "Energy basis" not in page:
        page = browser.evaluate(
            "(async () => { const f = document.querySelector('iframe.mlflow-html-iframe');"
            " return f && f.src ? await (await fetch(f.src)).text() : ''; })()"
        )
        time.sleep(0.5)
    assert "<table>" in page and "Energy basis" in page and "gmm-classical" in page


def test_without_the_parameter_mlflow_opens_the_genai_view(site):
    """What the links' parameter is for (MLflow's behaviour, documented in docs/ui.md): a fresh
    browser opening the bare experiment address lands on the GenAI overview."""
    with Chromium(CHROMIUM, 1600, 1000) as fresh:
        fresh.goto(f"{site['base']}/#/experiments/{site['exp_id']}")
        text = fresh.wait_for("Observability", timeout_s=120)
        assert not training_view(text)


@pytest.fixture(scope="module")
def autologged(site):
    """A user's sklearn script that never heard of wattsup, run with ``WATTSUP_AUTOLOG=1`` (and
    MLflow's own system metrics on) into the same store the server shows."""
    script = ui.start_autolog_script(site["store"], site["work"])
    assert script.wait(timeout=600) == 0, (site["work"] / "autolog.log").read_text()[-3000:]
    exp_id, run, model = ui.autolog_run(site["store"])
    return {"run": run, "model": model, "pages": ui.autolog_pages(site["base"], exp_id, run)}


def test_system_metrics_tab_charts_our_power_beside_mlflows(autologged, browser):
    """Charts render as they scroll into view, each with its legend (``<run> (<key>)``) once its
    data is drawn: MLflow's at the top of the tab, ours further down (alphabetical)."""
    name = autologged["run"].info.run_name
    browser.goto(autologged["pages"]["system-metrics"])
    text = browser.wait_for(f"{name} (system/cpu_utilization_percentage)", timeout_s=120)
    assert training_view(text)
    text = ui.show_power_chart(browser)
    for key in ("system/wattsup_power_w", "system/wattsup_energy_wh", "system/system_memory_usage_megabytes"):
        assert f"{name} ({key})" in text, key


def test_models_page_shows_the_energy_of_a_logged_model(autologged, browser):
    model, run = autologged["model"], autologged["run"]
    energy = {m.key: m.value for m in model.metrics}["energy_kwh"]
    assert 0 < energy < run.data.metrics["energy_kwh"]  # the cost up to the model's creation
    browser.goto(autologged["pages"]["models"])
    text = browser.wait_for(model.name, "Source run", timeout_s=120)
    assert training_view(text) and run.info.run_name in text
    shown = ui.show_model_energy(browser)
    assert shown is not None and float(shown) == pytest.approx(energy)
