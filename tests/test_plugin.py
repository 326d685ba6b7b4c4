import subprocess
import sys


def _tags_of_fresh_run(tracking_uri, env_extra=None):
    import os

    code = (
        "import mlflow, json\n"
        "with mlflow.start_run() as r: pass\n"
        "print(json.dumps({k: v for k, v in mlflow.get_run(r.info.run_id).data.tags.items() if k.startswith('wattsup.')}))\n"
    )
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, **(env_extra or {}))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def test_entry_point_tags_every_fluent_run(tracking_uri):
    tags = _tags_of_fresh_run(tracking_uri, {"WATTSUP_REGION": "FRA", "WATTSUP_PUE": "1.2"})
    for key in (
        "wattsup.version",
        "wattsup.cpu_model",
        "wattsup.cpu_logical",
        "wattsup.gpus",
        "wattsup.ram_total_gb",
        "wattsup.meters",
    ):
        assert key in tags, key
    assert tags["wattsup.config.region"] == "FRA" and tags["wattsup.config.pue"] == "1.2"
    assert float(tags["wattsup.config.carbon_intensity_g_per_kwh"]) > 0


def test_plugin_can_be_disabled(tracking_uri):
    assert _tags_of_fresh_run(tracking_uri, {"WATTSUP_DISABLE_PLUGIN": "1"}) == {}


def test_bad_config_never_breaks_start_run(tracking_uri):
    tags = _tags_of_fresh_run(tracking_uri, {"WATTSUP_REGION": "Atlantis"})
    assert "unknown region" in tags["wattsup.config.error"]


def test_detection_is_cached():
    from mlflow_wattsup.mlflow_layer.plugin import WattsupRunContextProvider, machine_tags

    machine_tags.cache_clear()
    p = WattsupRunContextProvider()
    first = p.tags()
    for _ in range(50):
        assert p.tags() == first
    assert machine_tags.cache_info().misses == 1
