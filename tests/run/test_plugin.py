import json
import os
import subprocess
import sys


def _tags_of_fresh_run(tracking_uri, env_extra=None):
    code = (
        "import mlflow, json\n"
        "with mlflow.start_run() as r: pass\n"
        "tags = mlflow.get_run(r.info.run_id).data.tags\n"
        "print(json.dumps({k: v for k, v in tags.items() if k.startswith('wattsup.')}))\n"
    )
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, **(env_extra or {}))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
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


def test_hardware_is_detected_once_per_process(tracking_uri):
    """Many runs in one process, one detection: the meters and the CPU are probed once, and a
    caller changing the tags it got changes no later run's."""
    code = (
        "import json, mlflow\n"
        "from mlflow_wattsup.meters import hardware, nvml, rapl\n"
        "calls = {}\n"
        "def counted(module, name):\n"
        "    real = getattr(module, name)\n"
        "    def probe(*args, **kwargs):\n"
        "        calls[name] = calls.get(name, 0) + 1\n"
        "        return real(*args, **kwargs)\n"
        "    setattr(module, name, probe)\n"
        "for module, name in ((hardware, 'cpu_info'), (hardware, 'total_memory_bytes'),\n"
        "                     (rapl, 'open_rapl'), (nvml, 'open_nvml')):\n"
        "    counted(module, name)\n"
        "from mlflow_wattsup.run.plugin import WattsupRunContextProvider\n"
        "models = []\n"
        "for _ in range(3):\n"
        "    with mlflow.start_run() as r:\n"
        "        pass\n"
        "    models.append(mlflow.get_run(r.info.run_id).data.tags['wattsup.cpu_model'])\n"
        "provider = WattsupRunContextProvider()\n"
        "provider.tags()['wattsup.cpu_model'] = 'changed by a caller'\n"
        "models += [provider.tags()['wattsup.cpu_model'] for _ in range(20)]\n"
        "print(json.dumps({'calls': calls, 'models': models}))\n"
    )
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    env.pop("WATTSUP_DISABLE_PLUGIN", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["calls"] == {"cpu_info": 1, "total_memory_bytes": 1, "open_rapl": 1, "open_nvml": 1}
    assert len(seen["models"]) == 23 and len(set(seen["models"])) == 1
    assert seen["models"][0] not in ("", "changed by a caller")
