"""Every metric, param and tag name we log, and the builders that map our values to them.

This module is the code side of the public contract in ``docs/metrics.md`` (users filter on these
keys in ``mlflow.search_runs``; reports group on them). Other modules never spell a key: they call
a builder here or use a constant. Units are in the names: ``_s`` seconds, ``_kwh`` kWh, ``_w``
watts, ``_g`` grams CO2eq.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mlflow_wattsup.analysis.carbon import CarbonConfig
from mlflow_wattsup.meters.units import Energy, kwh, wh

PREFIX = "wattsup."
#: set in the environment of a command run by ``wattsup run``: the run it is logged to
RUN_ENV = "WATTSUP_RUN_ID"

# -- tags ---------------------------------------------------------------------------------------
VERSION = "wattsup.version"
COMMAND = "wattsup.command"
STATUS = "wattsup.status"
EXIT_CODE = "wattsup.exit_code"
PIPELINE = "wattsup.pipeline"
DEVICE = "wattsup.device"
SUBJECT = "wattsup.subject"
DATASET = "wattsup.dataset"
WARNING_PREFIX = "wattsup.warning."
SOURCE_PREFIX = "wattsup.source."
GPU_ATTRIBUTION = "wattsup.gpu_attribution"
PREDICTION = "wattsup.prediction"
PLANNED_EPOCHS = "wattsup.planned_epochs"
IMPORT_KEY = "wattsup.import.key"
IMPORT_SOURCE = "wattsup.import.source"
IMPORT_NOTES = "wattsup.import.notes"
FLOPS_BACKEND = "wattsup.flops_backend"
FLOPS_INPUT_SHAPE = "wattsup.flops_input_shape"
FLOPS_ERRORS = "wattsup.flops_errors"
ESTIMATE_PREFIX = "wattsup.estimate."
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # marks a training experiment in the MLflow 3 UI

ESTIMATE_CPU_W_PER_THREAD = "wattsup.estimate.cpu_w_per_thread"
ESTIMATE_CPU_BASIS = "wattsup.estimate.cpu_basis"
ESTIMATE_CPU_TDP_W = "wattsup.estimate.cpu_tdp_w"
ESTIMATE_RAM_W_PER_GB = "wattsup.estimate.ram_w_per_gb"
SOURCE_GPU = "wattsup.source.gpu"
IMPORT_TOOL = "wattsup.import.tool"
SOURCE_CARBON_INTENSITY = "wattsup.source.carbon_intensity"
SOURCE_PUE = "wattsup.source.pue"
MODEL_COST = "wattsup.model_cost"
DIGEST = "wattsup.digest"
MODEL_URI = "wattsup.model_uri"
T1 = "wattsup.t1"

# -- SLURM backend and study jobs (tags) -----------------------------------------------------------
SLURM_JOB_ID = "wattsup.slurm.job_id"
SLURM_STATE = "wattsup.slurm.state"
SLURM_NODE = "wattsup.slurm.node"
JOB_LOG = "wattsup.job.log"

# -- studies (tags) --------------------------------------------------------------------------------
STUDY = "wattsup.study"
STUDY_ROLE = "wattsup.study.role"
STUDY_DATASET = "wattsup.study.dataset"
STUDY_DATASET_SHA256 = "wattsup.study.dataset_sha256"
STUDY_SPEC_SHA256 = "wattsup.study.spec_sha256"
STUDY_BACKEND = "wattsup.study.backend"
STUDY_PARAMS_HASH = "wattsup.study.params_hash"
STUDY_ATTEMPT = "wattsup.study.attempt"
STUDY_PROJECT_PIPELINE = "wattsup.study.project_pipeline"
STUDY_STALE = "wattsup.study.stale"

# -- studies (parent params) -----------------------------------------------------------------------
STUDY_SUBJECTS = "wattsup.study.subjects"
STUDY_PIPELINES = "wattsup.study.pipelines"
STUDY_DEVICES = "wattsup.study.devices"
STUDY_PARAM_PREFIX = "wattsup.study.param."  # + "<pipeline>.<key>"

# -- studies (parent metrics) ----------------------------------------------------------------------
STUDY_CHILDREN = "study/children"
STUDY_FINISHED = "study/finished"
STUDY_FAILED = "study/failed"
STUDY_KILLED = "study/killed"
STUDY_SKIPPED = "study/skipped"
STUDY_SUBMITTED = "study/submitted"
STUDY_WALL_S = "study/wall_s"

# -- a study's agreement of two pipelines (``wattsup study --agreement RUN:REFERENCE``) ----------
#: parent: the pairs compared, ``RUN:REFERENCE`` comma separated
STUDY_AGREEMENT = "wattsup.study.agreement"
#: child: the run of the reference pipeline's child (same subject) it was compared against
STUDY_REFERENCE_RUN = "wattsup.study.reference_run"
#: child: the subject directory the study read its volumes and thickness from
STUDY_SUBJECT_DIR = "wattsup.study.subject_dir"

DICE_EXCLUDED_LABELS = "wattsup.dice.excluded_labels"
FASTSURFER_MODULES = "wattsup.fastsurfer.modules"
CPUS = "wattsup.cpus"
FASTSURFER_IMAGE = "wattsup.fastsurfer.image"
WARNING_FLOPS = "wattsup.warning.flops"
FASTSURFER_DEVICE = "wattsup.fastsurfer.device"
DIRECTIVE = "wattsup.directive"
FSTIME_NESTED = "wattsup.fstime.nested"

# -- params ---------------------------------------------------------------------------------------
PUE = "wattsup.pue"
CARBON_INTENSITY = "wattsup.carbon_intensity_g_per_kwh"
REGION = "wattsup.region"
INTERVAL_S = "wattsup.interval_s"

# -- metrics --------------------------------------------------------------------------------------
DURATION_S = "duration_s"
ENERGY_KWH = "energy_kwh"
CARBON_G = "carbon_g"
POWER_MEAN_W = "power_mean_w"
CPU_TIME_S = "cpu_time_s"
TRACKER_CPU_S = "tracker_cpu_s"
OVERHEAD_CPU_S = "overhead_cpu_s"
#: PAPI double-precision operations of an EIT tracking process's own thread (never the pipeline's FLOPs)
PAPI_DP_OPS = "papi_dp_ops_tracking_process"
#: the power series' names under a distributed run's ``rank/<r>/`` or ``host/<host>/`` prefix; a
#: run's own series is :data:`SYSTEM_POWER_SERIES`
POWER_SERIES = ("power_w", "power_cpu_w", "power_gpu_w", "power_ram_w")


def warning_tag(name: str) -> str:
    return WARNING_PREFIX + name


def energy_metrics(e: Energy, prefix: str = "energy") -> dict[str, float]:
    """``<prefix>_kwh`` and its CPU, GPU and RAM parts."""
    return {
        f"{prefix}_kwh": kwh(e.total_j),
        f"{prefix}_cpu_kwh": kwh(e.cpu_j),
        f"{prefix}_gpu_kwh": kwh(e.gpu_j),
        f"{prefix}_ram_kwh": kwh(e.ram_j),
    }


def run_metrics(
    duration_s: float,
    energy: Energy,
    carbon: CarbonConfig,
    *,
    machine_energy: Energy | None = None,
    cpu_time_s: float | None = None,
) -> dict[str, float]:
    """The run-level metrics of ``docs/metrics.md``: duration, energy (+ machine), carbon, mean
    power, CPU time (None: not known, e.g. an import)."""
    out = {DURATION_S: duration_s, **energy_metrics(energy)}
    if machine_energy is not None:
        out.update(energy_metrics(machine_energy, "machine_energy"))
    out[CARBON_G] = carbon.carbon_g(energy.total_j)
    out[POWER_MEAN_W] = energy.total_j / duration_s if duration_s > 0 else 0.0
    if cpu_time_s is not None:
        out[CPU_TIME_S] = cpu_time_s
    return out


def stage_metrics(
    name: str,
    start_s: float,
    end_s: float,
    duration_s: float,
    energy: Energy,
    carbon: CarbonConfig,
    cpu_time_s: float | None = None,
) -> dict[str, float]:
    """``stage/<name>/...`` of one stage (``name`` already made a valid key, see ``stage_key``)."""
    p = f"stage/{name}/"
    out = {
        p + "start_s": start_s,
        p + "end_s": end_s,
        p + "duration_s": duration_s,
        **{p + k: v for k, v in energy_metrics(energy).items()},
        p + "carbon_g": carbon.carbon_g(energy.total_j),
    }
    if cpu_time_s is not None:
        out[p + "cpu_time_s"] = cpu_time_s
    return out


def power_metrics(power_w: float, cpu_w: float, gpu_w: float, ram_w: float | None) -> dict[str, float]:
    """One point of a run's power time series (watts), under ``system/`` (see
    :data:`SYSTEM_POWER_SERIES`); ``ram_w`` None where it is not known."""
    return _series(SYSTEM_POWER_SERIES, power_w, cpu_w, gpu_w, ram_w)


def _series(names: tuple[str, ...], power_w: float, cpu_w: float, gpu_w: float, ram_w: float | None) -> dict:
    out = dict(zip(names, (power_w, cpu_w, gpu_w), strict=False))
    if ram_w is not None:
        out[names[3]] = ram_w
    return out


def epoch_metrics(energy_j: float, duration_s: float, cumulative_j: float, carbon: CarbonConfig) -> dict:
    return {
        "epoch_energy_kwh": kwh(energy_j),
        "epoch_duration_s": duration_s,
        "epoch_carbon_g": carbon.carbon_g(energy_j),
        "energy_cumulative_kwh": kwh(cumulative_j),
    }


def prediction_metrics(total_j: float, duration_s: float, carbon: CarbonConfig) -> dict[str, float]:
    return {
        "predicted_energy_kwh": kwh(total_j),
        "predicted_carbon_g": carbon.carbon_g(total_j),
        "predicted_duration_s": duration_s,
    }


def step_metrics(energy_j: float) -> dict[str, float]:
    return {"step_energy_kwh": kwh(energy_j)}


def prediction_tags(planned_epochs: int) -> dict[str, str]:
    return {PREDICTION: "linear", PLANNED_EPOCHS: str(planned_epochs)}


def carbon_params(carbon: CarbonConfig) -> dict[str, str]:
    return {
        PUE: f"{carbon.pue:g}",
        CARBON_INTENSITY: f"{carbon.intensity.g_per_kwh:.6g}",
        REGION: carbon.intensity.region or "none",
    }


def carbon_tags(intensity_source: str, pue_source: str) -> dict[str, str]:
    return {SOURCE_PREFIX + "carbon_intensity": intensity_source, SOURCE_PREFIX + "pue": pue_source}


def source_tags(cpu: str, gpu: str, ram: str, gpu_attribution: str | None = None) -> dict[str, str]:
    """``wattsup.source.{cpu,gpu,ram}``: how each part of the energy was obtained."""
    tags = {SOURCE_PREFIX + "cpu": cpu, SOURCE_PREFIX + "gpu": gpu, SOURCE_PREFIX + "ram": ram}
    if gpu != "none" and gpu_attribution:
        tags[GPU_ATTRIBUTION] = gpu_attribution
    return tags


def estimate_params(*models: Any) -> dict[str, str]:
    """``wattsup.estimate.*``: the estimator's parameters (each model's ``params()``), so a reader
    can recompute an estimate."""
    return {ESTIMATE_PREFIX + k: v for m in models for k, v in m.params().items()}


def warning_tags(warnings: Mapping[str, str]) -> dict[str, str]:
    return {warning_tag(k): v for k, v in warnings.items()}


def model_cost_metrics(cost: Any, samples_seen: int | None = None) -> dict[str, float]:
    """``params``, ``params_trainable``, ``macs``, ``flops`` and the cross-checks of a ModelCost."""
    out = {
        "params": cost.params,
        "params_trainable": cost.params_trainable,
        "macs": cost.macs,
        "flops": cost.flops,
    }
    for backend, macs in cost.checks.items():
        out[f"macs_check/{backend}"] = macs
    if samples_seen is not None:
        out["train_flops_estimate"] = cost.train_flops_estimate(samples_seen)
    return out


def model_cost_tags(cost: Any) -> dict[str, str]:
    shape = ";".join("x".join(map(str, s)) for s in cost.input_shapes)
    tags = {
        FLOPS_BACKEND: cost.backend,
        FLOPS_INPUT_SHAPE: shape if cost.passes == 1 else f"{cost.passes} passes x {shape}",
    }
    if cost.errors:
        tags[FLOPS_ERRORS] = "; ".join(f"{k}: {v}" for k, v in cost.errors.items())
    return tags


def dice_metrics(result: Any, prefix: str = "dice") -> dict[str, float]:
    """``<prefix>/<label name>``, ``<prefix>_mean``, ``<prefix>_labels_n`` of a DiceResult."""
    out = {f"{prefix}/{s.name}": s.dice for s in result.scores}
    if result.scores:
        out[f"{prefix}_mean"] = result.mean
    out[f"{prefix}_labels_n"] = len(result.scores)
    return out


def dice_tags(result: Any, prefix: str = "dice") -> dict[str, str]:
    tags = {f"{PREFIX}{prefix}.labels": ",".join(str(v) for v in result.labels)}
    if result.names_source:
        tags[f"{PREFIX}{prefix}.names"] = result.names_source
    if result.merge:
        tags[f"{PREFIX}{prefix}.merge"] = result.merge
    if result.absent:
        tags[f"{PREFIX}{prefix}.absent"] = ",".join(str(v) for v in result.absent)
    return tags


def import_tags(key: str, source: str, notes: Iterable[str] = ()) -> dict[str, str]:
    tags = {IMPORT_KEY: key, IMPORT_SOURCE: source}
    notes = list(notes)
    if notes:
        tags[IMPORT_NOTES] = "; ".join(notes)
    return tags


def fact_tags(facts: Mapping[str, str]) -> dict[str, str]:
    """``wattsup.<fact>`` tags from the facts a layer-2 reader returns unprefixed (an importer's
    ``device``, ``cpu_model``; FastSurfer's model cost ``flops_backend``, ...)."""
    return {PREFIX + k: v for k, v in facts.items()}


def end_tags(status: str, exit_code: int | None = None) -> dict[str, str]:
    """The run's end: ``wattsup.status`` (FINISHED, FAILED, KILLED) and the command's exit code."""
    tags = {STATUS: status}
    if exit_code is not None:
        tags[EXIT_CODE] = str(exit_code)
    return tags


# -- distributed jobs (one run for all ranks and hosts; see tracking/distributed.py) --------------
DIST_JOB = "wattsup.dist.job"
DIST_LAUNCHER = "wattsup.dist.launcher"
DIST_MODE = "wattsup.dist.mode"
DIST_AGENTS = "wattsup.dist.agents"
DIST_HOSTS = "wattsup.dist.hosts"
DIST_MISSING = "wattsup.dist.missing"
DIST_AGENT_PREFIX = "wattsup.dist.agent."
DIST_CAPPED = "wattsup.dist.capped"
DIST_TAKEOVER = "wattsup.dist.takeover"  # who ended the run in agent 0's place, and why


def dist_agent_tag(agent: int) -> str:
    """``wattsup.dist.agent.<n>``: agent n's state (``joined <host> rank <r>``) then its report (JSON)."""
    return f"{DIST_AGENT_PREFIX}{agent}"


def dist_agent_of(tag: str) -> int | None:
    """The agent number of a ``wattsup.dist.agent.<n>`` tag, else None."""
    if tag.startswith(DIST_AGENT_PREFIX) and tag[len(DIST_AGENT_PREFIX) :].isdigit():
        return int(tag[len(DIST_AGENT_PREFIX) :])
    return None


def dist_tags(launcher: str, job_key: str, mode: str, agents: int) -> dict[str, str]:
    return {DIST_LAUNCHER: launcher, DIST_JOB: job_key, DIST_MODE: mode, DIST_AGENTS: str(agents)}


def dist_series(prefix: str, power_w: float, cpu_w: float, gpu_w: float, ram_w: float | None) -> dict:
    """One agent's power series point under ``rank/<r>/`` or ``host/<host>/``."""
    return {prefix + k: v for k, v in _series(POWER_SERIES, power_w, cpu_w, gpu_w, ram_w).items()}


def dist_prefix(mode: str, agent: int, host: str) -> str:
    """Where an agent's own series and breakdown go: ``rank/<r>/`` or ``host/<host>/``."""
    from mlflow_wattsup.tracking.tracker import stage_key

    return f"rank/{agent}/" if mode == "rank" else f"host/{stage_key(host).replace('/', '_')}/"


def dist_part_metrics(
    prefix: str, energy: Energy, machine_energy: Energy | None, cpu_time_s: float, duration_s: float | None
) -> dict[str, float]:
    """A host's or rank's share of a distributed run: ``<prefix>energy_kwh`` (+ parts),
    ``<prefix>machine_energy_kwh`` (+ parts, hosts only), ``<prefix>cpu_time_s``, ``<prefix>duration_s``."""
    out = {prefix + k: v for k, v in energy_metrics(energy).items()}
    if machine_energy is not None:
        out.update({prefix + k: v for k, v in energy_metrics(machine_energy, "machine_energy").items()})
    out[prefix + CPU_TIME_S] = cpu_time_s
    if duration_s is not None:
        out[prefix + DURATION_S] = duration_s
    return out


# -- issue 18: autolog, the System metrics tab, MLflow 3's logged models ---------------------------
#: a run's power trace and energy so far go under MLflow's ``system/`` prefix, so they chart on the
#: run page's System metrics tab beside MLflow's own system metrics (and not among the model's)
SYSTEM_PREFIX = "system/wattsup_"
#: ``system/wattsup_power_w``, ``..._power_cpu_w``, ``..._power_gpu_w``, ``..._power_ram_w``
SYSTEM_POWER_SERIES = tuple(SYSTEM_PREFIX + k for k in POWER_SERIES)
#: attributed energy from the run's start to the point (Wh: a chart's natural scale)
SYSTEM_ENERGY_WH = SYSTEM_PREFIX + "energy_wh"
#: tag: the run was measured by autolog; the value says how it was turned on (``autolog()`` or
#: ``WATTSUP_AUTOLOG``)
AUTOLOG = "wattsup.autolog"
#: logged-model tag: which run, and which span of it, the model's energy and carbon cover
MODEL_BASIS = "wattsup.model_basis"
#: a run's model-cost metrics (see :func:`model_cost_metrics`) a logged model of the run also gets
MODEL_COST_METRICS = ("params", "params_trainable", "macs", "flops", "train_flops_estimate")


def sample_metrics(
    power_w: float, cpu_w: float, gpu_w: float, ram_w: float | None, energy_j: float
) -> dict[str, float]:
    """One point of a run's trace: :func:`power_metrics` and the energy so far."""
    return {**power_metrics(power_w, cpu_w, gpu_w, ram_w), SYSTEM_ENERGY_WH: wh(energy_j)}


def model_basis_tag(run_id: str, seconds: float, carbon: CarbonConfig) -> dict[str, str]:
    """``wattsup.model_basis`` of a logged model: the span of the run its cost covers (from the
    run's start to the model's creation) and the carbon settings applied."""
    c = carbon.intensity
    where = f"{c.region}, {c.source}" if c.region else c.source
    return {
        MODEL_BASIS: f"run {run_id}: from its start to this model's creation, {seconds:.1f} s; "
        f"carbon at {c.g_per_kwh:.4g} g CO2eq/kWh ({where}), PUE {carbon.pue:g}"
    }
