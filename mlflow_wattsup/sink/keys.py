"""Every metric, param and tag name we log, and the builders that map our values to them.

This module is the code side of the public contract in ``docs/metrics.md`` (users filter on these
keys in ``mlflow.search_runs``; reports group on them). Other modules never spell a key: they call
a builder here or use a constant. Units are in the names: ``_s`` seconds, ``_kwh`` kWh, ``_w``
watts, ``_g`` grams CO2eq.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow_wattsup.analysis.carbon import CarbonConfig
from mlflow_wattsup.meters.units import Energy, kwh, wh

PREFIX = "wattsup."
_KEY_PART_BAD = re.compile(r"[^A-Za-z0-9_\-.]")
#: set in the environment of a measured command (``wattsup run``, the ``wattsup`` and ``slurm``
#: project backends): the run it is measured into; a measurer inside it that would measure that
#: same run logs a stage of it instead (docs/backends.md)
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
#: a run we create: a uuid sent with the creation, so that a creation retried after a timeout (the
#: server may have made the run) or replayed from a spool finds that run instead of making another
CREATE_TOKEN = "wattsup.create_token"
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
#: dataset input tag: how its digest was computed (``file-sha256`` or ``array-sha256``)
DIGEST = "wattsup.digest"
MODEL_URI = "wattsup.model_uri"
T1 = "wattsup.t1"

# -- the machine and its configuration (tags of the run_context_provider plugin, run/plugin.py) --
CPU_MODEL = "wattsup.cpu_model"
CPU_LOGICAL = "wattsup.cpu_logical"
RAM_TOTAL_GB = "wattsup.ram_total_gb"
GPUS = "wattsup.gpus"
GPU_DRIVER = "wattsup.gpu_driver"
METERS = "wattsup.meters"
CONFIG_CARBON_INTENSITY = "wattsup.config.carbon_intensity_g_per_kwh"
CONFIG_REGION = "wattsup.config.region"
CONFIG_PUE = "wattsup.config.pue"
CONFIG_ERROR = "wattsup.config.error"

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

# -- a subject's volumes and thickness, and their agreement with a reference subject directory ---
#: per measure, the metric prefix of the run's own values (``<prefix>/<structure>``) and of its
#: difference from the reference (``<prefix>/<structure>``, run - reference)
VALUE_PREFIX = {"volume": "volume_mm3", "thickness": "thickness_mm"}
DIFF_PREFIX = {"volume": "volume_diff_mm3", "thickness": "thickness_diff_mm"}
#: the reference subject directory compared against (absolute path)
AGREE_REFERENCE = "wattsup.agree.reference"
#: a stats file that could not be read (``file:line: what``)
WARNING_AGREEMENT = "wattsup.warning.agreement"

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


def dice_names_tag(prefix: str = "dice") -> str:
    """``wattsup.<prefix>.names``: where the label names of a Dice came from."""
    return f"{PREFIX}{prefix}.names"


def dice_tags(result: Any, prefix: str = "dice") -> dict[str, str]:
    tags = {f"{PREFIX}{prefix}.labels": ",".join(str(v) for v in result.labels)}
    if result.names_source:
        tags[dice_names_tag(prefix)] = result.names_source
    if result.merge:
        tags[f"{PREFIX}{prefix}.merge"] = result.merge
    if result.absent:
        tags[f"{PREFIX}{prefix}.absent"] = ",".join(str(v) for v in result.absent)
    return tags


def key_part(name: str) -> str:
    """A structure name as one key segment (characters other than ``A-Za-z0-9_-.`` -> ``_``)."""
    return _KEY_PART_BAD.sub("_", name)


def stats_tag(measure: str) -> str:
    """``wattsup.stats.<measure>`` (volume, thickness): the stats file(s) read, or ``n/a: <why>``."""
    return f"{PREFIX}stats.{measure}"


def agree_tag(measure: str) -> str:
    """``wattsup.agree.<measure>`` (volume, thickness, dice): what was compared, or ``n/a: <why>``."""
    return f"{PREFIX}agree.{measure}"


def agree_unmatched_tag(measure: str) -> str:
    """``wattsup.agree.<measure>_unmatched``: the names in one side only."""
    return f"{PREFIX}agree.{measure}_unmatched"


def subject_value_metrics(
    volumes_mm3: Mapping[str, float], thickness_mm: Mapping[str, float]
) -> dict[str, float]:
    """``volume_mm3/<structure>`` and ``thickness_mm/<region>``: a run's own values."""
    out = {f"{VALUE_PREFIX['volume']}/{key_part(k)}": v for k, v in volumes_mm3.items()}
    out.update({f"{VALUE_PREFIX['thickness']}/{key_part(k)}": v for k, v in thickness_mm.items()})
    return out


def comparison_metrics(c: Any, unit: str) -> dict[str, float]:
    """Of a Comparison of one measure with the reference (``unit``: mm3, mm): the differences per
    structure, ``<measure>_compared_n``, and the means of the differences (signed, absolute,
    absolute relative) when any was compared."""
    m = c.measure
    out = {f"{DIFF_PREFIX[m]}/{key_part(p.name)}": p.diff for p in c.compared}
    out[f"{m}_compared_n"] = c.n
    if c.n:
        out[f"{m}_diff_mean_{unit}"] = c.mean_diff()
        out[f"{m}_absdiff_mean_{unit}"] = c.mean_absdiff()
        rel = c.mean_absreldiff()
        if rel is not None:
            out[f"{m}_absreldiff_mean"] = rel
    return out


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


# -- issue 21: pruning, sweeps, forecasts (appended block) -----------------------------------------
#: metrics: what a pruned network still computes (beside the dense ``params``/``macs``/``flops``)
MACS_NONZERO = "macs_nonzero"
PARAMS_NONZERO = "params_nonzero"
SPARSITY = "sparsity"
#: tag: how the run's network was pruned (method, fraction, what was removed)
PRUNE = "wattsup.prune"
#: child tags ``wattsup.sweep.<name>``: the value of each parameter a study swept
SWEEP_PREFIX = "wattsup.sweep."
#: parent params ``wattsup.study.sweep.<pipeline>.<name>``: the values swept, comma separated
STUDY_SWEEP_PREFIX = "wattsup.study.sweep."
#: parent tag: the subject counts forecast, the interval and the what-if (rewritten every invocation)
STUDY_FORECAST = "wattsup.study.forecast"


def pruning_metrics(params: int, params_nonzero: int, macs_nonzero: int | None) -> dict[str, float]:
    """``params_nonzero``, ``sparsity`` (fraction of parameters exactly 0) and ``macs_nonzero``."""
    out = {PARAMS_NONZERO: params_nonzero, SPARSITY: 1.0 - params_nonzero / params if params else 0.0}
    if macs_nonzero is not None:
        out[MACS_NONZERO] = macs_nonzero
    return out


def sweep_tag(name: str) -> str:
    """``wattsup.sweep.<name>``: a child's value of the swept parameter ``name``."""
    return SWEEP_PREFIX + name


def sweep_tags(values: Mapping[str, str]) -> dict[str, str]:
    return {sweep_tag(k): v for k, v in values.items()}


def swept_values(tags: Mapping[str, str]) -> dict[str, str]:
    """The swept parameters of a run, from its ``wattsup.sweep.*`` tags."""
    return {k[len(SWEEP_PREFIX) :]: v for k, v in tags.items() if k.startswith(SWEEP_PREFIX)}


def study_sweep_param(pipeline: str, name: str) -> str:
    return f"{STUDY_SWEEP_PREFIX}{pipeline}.{name}"


# -- SLURM's own energy accounting and the GPU/counter sources of issue 22 (meters/slurm.py,
# meters/amdsmi.py, meters/sanity.py) ---------------------------------------------------------------
#: metric (kWh): the job step's energy by SLURM's accounting over the run (its ConsumedEnergyRaw at
#: the end minus at the start); logged only where SLURM collected it (never a 0 meaning "no plugin")
SLURM_ENERGY_KWH = "slurm_energy_kwh"
#: tag: ``slurm`` when ``slurm_energy_kwh`` was logged, ``not collected`` when SLURM reported 0 or nothing
SOURCE_SLURM = "wattsup.source.slurm"
#: tag: how SLURM's figure was read (step, sstat/sacct, values), or why there is none
SLURM_ENERGY = "wattsup.slurm.energy"
#: tag: the share rule: ``exclusive (OverSubscribe=NO): the node's energy is the job's``, ``shared ...``
SLURM_ALLOCATION = "wattsup.slurm.allocation"
#: ``wattsup.source.gpu`` of a GPU that reports neither energy nor power (``<source>+unmeasured``:
#: for part of the run); the other values added by issue 22 are ``amdsmi-energy``, ``amdsmi-power``
GPU_UNMEASURED = "unmeasured"


def slurm_metrics(slurm: Any) -> dict[str, float]:
    """``slurm_energy_kwh`` of a :class:`~mlflow_wattsup.meters.slurm.SlurmEnergy` that SLURM
    collected; nothing for None (not in a SLURM job) or "not collected"."""
    if slurm is None or slurm.energy_j is None:
        return {}
    return {SLURM_ENERGY_KWH: kwh(slurm.energy_j)}


def slurm_tags(slurm: Any) -> dict[str, str]:
    """``wattsup.source.slurm``, ``wattsup.slurm.energy`` and ``wattsup.slurm.allocation`` of a run
    inside a SLURM job (nothing outside one)."""
    if slurm is None:
        return {}
    return {SOURCE_SLURM: slurm.source, SLURM_ENERGY: slurm.detail, SLURM_ALLOCATION: slurm.allocation.rule}


# -- containers the run started (issue 19; tracking/containers.py) -------------------------------
#: tag: the containers attributed to the run, ``<runtime>:<12-character id>`` comma separated
CONTAINER_ATTRIBUTION = "wattsup.attribution.container"
#: tag: how they were counted: ``cgroup-v1``/``cgroup-v2`` (their cgroup's CPU time and memory
#: added to the run's) or ``process-tree`` (their processes were the run's own descendants)
CONTAINER_METHOD = "wattsup.attribution.container_method"
#: metric: CPU seconds of the attributed containers' cgroups (part of ``cpu_time_s``)
CONTAINER_CPU_TIME_S = "container_cpu_time_s"
#: tag: the FreeSurfer image a ``projects/freesurfer`` run used (``docker://REF``)
FREESURFER_IMAGE = "wattsup.freesurfer.image"
_CONTAINERS_LISTED = 20


def container_tags(uses: Iterable[Any]) -> dict[str, str]:
    """``wattsup.attribution.container`` and ``..._method`` of the containers attributed
    (``tracking.containers.ContainerUse``); nothing when there were none."""
    uses = list(uses)
    if not uses:
        return {}
    labels = [u.label for u in uses[:_CONTAINERS_LISTED]]
    if len(uses) > _CONTAINERS_LISTED:
        labels.append(f"and {len(uses) - _CONTAINERS_LISTED} more")
    methods = list(dict.fromkeys(u.method for u in uses))
    return {CONTAINER_ATTRIBUTION: ", ".join(labels), CONTAINER_METHOD: ",".join(methods)}


def container_metrics(uses: Iterable[Any]) -> dict[str, float]:
    """``container_cpu_time_s``: CPU seconds of the attributed containers (their cgroups)."""
    uses = list(uses)
    return {CONTAINER_CPU_TIME_S: sum(u.cpu_s for u in uses)} if uses else {}


# -- end of the containers block -------------------------------------------------------------------


# -- training-loop callbacks (issue 18: run/callbacks/; Lightning and Transformers) ---------------
#: tag: which framework's callback measured the run, with its version (``lightning 2.6.6``)
CALLBACK = "wattsup.callback"
#: tag: how the callback chose its run (``logger``: the framework's MLflow logger's run; ``active``:
#: the active fluent run; ``own``: one it started, as ``track()`` would)
CALLBACK_RUN = "wattsup.callback.run"
#: tag: optimizer steps the prediction is for, where the plan is in steps (``max_steps``)
PLANNED_STEPS = "wattsup.planned_steps"


def callback_tags(framework: str, version: str, run_source: str) -> dict[str, str]:
    return {CALLBACK: f"{framework} {version}", CALLBACK_RUN: run_source}


def epoch_power_metrics(energy_j: float, duration_s: float) -> dict[str, float]:
    """``epoch_power_w``: the epoch's mean attributed power."""
    return {"epoch_power_w": energy_j / duration_s if duration_s > 0 else 0.0}


def step_prediction_tags(planned_steps: int) -> dict[str, str]:
    return {PREDICTION: "linear", PLANNED_STEPS: str(planned_steps)}


def train_flops_metrics(cost: Any, passes: int) -> dict[str, float]:
    """``train_flops_estimate`` alone (3 x forward FLOPs of one counted pass x ``passes``), for a
    callback that counted the model at the start and knows the passes only at the end."""
    return {k: v for k, v in model_cost_metrics(cost, passes).items() if k not in model_cost_metrics(cost)}


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
