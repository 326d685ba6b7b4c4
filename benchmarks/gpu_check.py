"""Validate the NVIDIA GPU meters on real hardware, in one run of under 5 minutes on an H100.

Run it on a machine with an NVIDIA GPU, torch with CUDA, and nvidia-ml-py (see benchmarks/README.md
for the lent machine): ``python3 benchmarks/gpu_check.py [--json OUT.json]``. It prints a table and
exits 1 when a figure disagrees beyond its target, 0 otherwise; on a machine without an NVIDIA GPU it
prints ``skipped: no NVIDIA GPU`` and exits 0 (CI runs that path). The core checks import only our
meters and tracker (no MLflow); the MLflow parts run only where MLflow can be imported, else they
are said to be skipped.

Checks (GPU 0 of what NVML sees, the device the work runs on):

1. **counter vs power**: NVML's energy counter (``nvmlDeviceGetTotalEnergyConsumption``) against
   the trapezoidal integral of its power readings (``nvmlDeviceGetPowerUsage``, every 10 ms) over
   the same window, idle and at two loads (bf16 matrix products 50 % of each 0.2 s period, and
   100 %), after 2 s of settling. Target: within 5 %.
2. **sampling interval**: the same power traces integrated from one reading every 0.1, 0.5, 1, 2
   and 5 s, against the counter (how much a sampler at that interval misses; information).
3. **run vs counter**: the tracker's GPU energy against the counter read around the same work:
   in-process (``track()``'s tracker) and for a child process (``wattsup run``'s runner); then,
   where MLflow imports, ``wattsup run`` and ``track()`` themselves (logged to a sqlite store and
   read back; the counter read by the command itself, or inside the ``track()`` block, first and
   last thing).
   Target: within 5 %, and at least half of the device's energy attributed to the run (the only
   GPU user; the seconds before its process holds a CUDA context are the device's, not the run's).
4. **two processes sharing the GPU**: one at full load, one at 30 %, each measured by its own
   tracker: each gets a share, the busier the larger, and together at most the device (+2 %).
5. **CUDA_VISIBLE_DEVICES**: for unset, empty, ``0``, the GPU's UUID and a UUID prefix, an index
   past the last GPU: the GPUs we meter equal the devices CUDA shows (torch in a fresh process).
6. **FastSurferVINN** (FastSurfer 2.x's asegdkt network, our definition, random weights, eval,
   batch 8 of 7x256x256, fp32) on the GPU: time and energy per slice over one view's 256 slices,
   against 2.4 s per slice on 2 CPU cores (benchmarks/fastsurfer_e2e.py); the tracker's energy vs
   the counter's (5 %).
7. ``mlflow run projects/segmentation -e train -P device=gpu`` (MLflow only): FINISHED, GPU energy
   metered (source ``nvml-energy``) and at most the counter's.

``--device cpu`` runs the same checks with torch work on the CPU standing in for the GPU's; the
tests do that against a simulated NVML (tests/support/fakes/simgpu), so a lent GPU machine is not
the first run of this code. ``--quick`` shortens every phase (for those tests); ``--checks`` runs a
subset (``power,interval,tracker,runner,shared,visible,vinn,mlflow``). A check that raises becomes
a FAIL row and the others still run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if sys.argv[1:2] != ["--burn"]:  # a worker reads the counter first thing: import only what it needs
    from mlflow_wattsup.meters import nvml as nvml_meter
    from mlflow_wattsup.meters.proctree import ProcessTreeMeter
    from mlflow_wattsup.tracking.runner import execute
    from mlflow_wattsup.tracking.tracker import Tracker

TARGET_PCT = 5.0
SHARE_MIN = 0.50
BUDGET_S = 270.0  # stop starting checks after this: the lent machine gives 15 minutes in all
CPU_S_PER_SLICE = 2.4  # FastSurferVINN on 2 CPU cores, 2 threads (field notes, fastsurfer_e2e.py)
SKIPPED_NO_GPU = "skipped: no NVIDIA GPU"


@dataclass
class Row:
    check: str
    figure: str
    reference: str
    diff_pct: float | None
    target: str
    verdict: str  # ok, FAIL, info, skipped: why


def pct(value: float, reference: float) -> float | None:
    return None if reference == 0 else 100.0 * (value - reference) / reference


def within(d: float | None, target: float = TARGET_PCT) -> str:
    return "ok" if d is not None and abs(d) <= target else "FAIL"


# -- GPU work (also run as a child: ``gpu_check.py --burn DEVICE SECONDS DUTY [--wait-go]``) ------


def burn(device: str, seconds: float, duty: float = 1.0, period_s: float = 0.2, ready=None) -> None:
    """Matrix products on ``device`` for ``seconds``, busy ``duty`` of every ``period_s``."""
    import torch

    cuda = device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(1)
    n = 8192 if cuda else 192
    dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    a @ b
    sync()
    if ready is not None:
        ready()
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        busy_until = min(end, now + period_s * duty)
        while time.monotonic() < busy_until:
            for _ in range(4):
                a @ b
            sync()
        rest = min(end, now + period_s) - time.monotonic()
        if duty < 1.0 and rest > 0:
            time.sleep(rest)


def pinned_counter_j() -> float:
    """The energy counter (J) of the GPU ``CUDA_VISIBLE_DEVICES`` pins by UUID (the check pins it)."""
    import pynvml

    pynvml.nvmlInit()
    want = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        uuid = pynvml.nvmlDeviceGetUUID(h)
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        if uuid == want or (not want.startswith("GPU-") and i == 0):
            return pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3
    raise SystemExit(f"no GPU with UUID {want!r}")


def _burn_main(argv: list[str]) -> int:
    """``--burn DEVICE SECONDS DUTY [--wait-go] [--counter-file PATH]``: the work as a process of its
    own; with ``--counter-file`` it reads the GPU's counter first thing and last thing (``e0 e1``, J),
    so its whole life, torch's start-up included, is bracketed."""
    device, seconds, duty = argv[0], float(argv[1]), float(argv[2])
    wait = "--wait-go" in argv
    out = argv[argv.index("--counter-file") + 1] if "--counter-file" in argv else None
    e0 = pinned_counter_j() if out else 0.0

    def ready():
        if wait:
            print("ready", flush=True)
            sys.stdin.readline()

    burn(device, seconds, duty, ready=ready)
    if out:
        Path(out).write_text(f"{e0} {pinned_counter_j()}\n")
    return 0


# -- the checks ----------------------------------------------------------------------------------


class GpuCheck:
    def __init__(self, args: argparse.Namespace, nvml, device: str):
        self.args = args
        self.nvml = nvml
        self.device = device
        self.q = 0.15 if args.quick else 1.0  # time scale
        self.rows: list[Row] = []
        self.t0 = time.monotonic()
        # the first GPU CUDA would use; pinned by UUID so that the work, our trackers and the
        # counter read here are all that one device (other GPUs of the machine are not metered)
        count = nvml.nvmlDeviceGetCount()
        uuids = [
            nvml_meter._decode(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i)))
            for i in range(count)
        ]
        index = nvml_meter.visible_indices(count, uuids, os.environ.get("CUDA_VISIBLE_DEVICES"))[0]
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)
        self.uuid = uuids[index]
        os.environ["CUDA_VISIBLE_DEVICES"] = self.uuid
        self.idle_w: float | None = None
        self.traces: dict[str, tuple[list[tuple[float, float]], float, float]] = {}

    def s(self, seconds: float) -> float:
        return max(0.3, seconds * self.q)

    def add(self, *row) -> None:
        r = Row(*row)
        self.rows.append(r)
        d = "" if r.diff_pct is None else f"{r.diff_pct:+.2f} %"
        print(
            f"  {r.check:<44} {r.figure:<28} {r.reference:<30} {d:>9}  {r.target:<10} {r.verdict}", flush=True
        )

    def counter_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3

    def power_w(self) -> float:
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1e3

    def burn_cmd(self, seconds: float, duty: float = 1.0, *extra: str) -> list[str]:
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            "--burn",
            self.device,
            f"{seconds}",
            f"{duty}",
            *extra,
        ]

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ, CUDA_DEVICE_ORDER="PCI_BUS_ID")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        # `python` (MLproject commands) is this interpreter, the one with torch
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def budget_left(self, name: str) -> bool:
        if time.monotonic() - self.t0 < BUDGET_S:
            return True
        self.add(name, "", "", None, "", "skipped: time budget spent")
        return False

    # 1 and 2 ------------------------------------------------------------------------------------
    def power_trace(self, label: str, duty: float | None, seconds: float, settle_s: float) -> None:
        work = None
        if duty is not None:
            work = threading.Thread(
                target=burn, args=(self.device, settle_s + seconds + 1.0, duty), daemon=True
            )
            work.start()
        time.sleep(settle_s)
        trace: list[tuple[float, float]] = []
        e0, t0 = self.counter_j(), time.monotonic()
        while (now := time.monotonic()) < t0 + seconds:
            trace.append((now, self.power_w()))
            time.sleep(0.01)
        trace.append((time.monotonic(), self.power_w()))
        e1, t1 = self.counter_j(), time.monotonic()
        if work is not None:
            work.join()
        counter = e1 - e0
        integral = sum(0.5 * (p0 + p1) * (b - a) for (a, p0), (b, p1) in zip(trace, trace[1:], strict=False))
        integral *= (t1 - t0) / max(1e-9, trace[-1][0] - trace[0][0])  # the same window as the counter
        if duty is None:
            self.idle_w = counter / (t1 - t0)
        self.traces[label] = (trace, counter, t1 - t0)
        self.add(
            f"counter vs power integral, {label}",
            f"{integral:.1f} J ({len(trace)} readings)",
            f"counter {counter:.1f} J ({counter / (t1 - t0):.0f} W)",
            pct(integral, counter),
            "5 %",
            within(pct(integral, counter)),
        )

    def check_counter_vs_power(self) -> None:
        settle = self.s(2.0)
        for label, duty in (("idle", None), ("load 50 % duty", 0.5), ("full load", 1.0)):
            if self.budget_left(f"counter vs power integral, {label}"):
                self.power_trace(label, duty, self.s(10.0), settle)

    def check_sampling_interval(self) -> None:
        for label in ("load 50 % duty", "full load"):
            if label not in self.traces:
                continue
            trace, counter, window = self.traces[label]
            for every_s in (0.1, 0.5, 1.0, 2.0, 5.0):
                if every_s > window / 2:
                    continue
                picked, next_t = [], trace[0][0]
                for t, p in trace:
                    if t >= next_t:
                        picked.append(p)
                        next_t += every_s
                energy = sum(picked) / len(picked) * window
                self.add(
                    f"power sampled every {every_s:g} s, {label}",
                    f"{energy:.1f} J ({len(picked)} readings)",
                    f"counter {counter:.1f} J",
                    pct(energy, counter),
                    "info",
                    "info",
                )

    # 3 ------------------------------------------------------------------------------------------
    def _tracked_rows(self, name: str, tot, counter: float) -> None:
        machine = tot.machine_energy.gpu_j
        self.add(
            f"{name}: GPU energy vs counter",
            f"{machine:.1f} J ({tot.sources.gpu})",
            f"counter {counter:.1f} J",
            pct(machine, counter),
            "5 %",
            within(pct(machine, counter)) if tot.sources.gpu == "nvml-energy" else "FAIL",
        )
        share = tot.energy.gpu_j / machine if machine > 0 else 0.0
        self.add(
            f"{name}: share attributed to the run",
            f"{100 * share:.1f} % ({tot.sources.attribution_gpu})",
            "the only GPU user",
            None,
            ">= 50 %",
            "ok" if share >= SHARE_MIN else "FAIL",
        )
        for k, v in tot.warnings.items():
            self.add(f"{name}: warning ({k})", v[:60], "", None, "none", "FAIL")

    def check_tracker_in_process(self) -> None:
        if not self.budget_left("track() core: tracker in this process"):
            return
        tracker = Tracker(ProcessTreeMeter(), interval_s=1.0, rapl=False)
        e0 = self.counter_j()
        tracker.start()
        burn(self.device, self.s(8.0))
        tot = tracker.stop()
        self._tracked_rows("track() core: tracker in this process", tot, self.counter_j() - e0)

    def check_runner_child(self) -> None:
        if not self.budget_left("wattsup run core: runner, child process"):
            return
        tracker = Tracker(ProcessTreeMeter(children_of=os.getpid()), interval_s=1.0, rapl=False)
        e0 = self.counter_j()
        tracker.start()
        code, _ = execute(self.burn_cmd(self.s(8.0)), tracker, self.child_env())
        tot = tracker.stop()
        counter = self.counter_j() - e0
        if code != 0:
            self.add("wattsup run core: runner, child process", f"exit {code}", "", None, "exit 0", "FAIL")
            return
        self._tracked_rows("wattsup run core: runner, child process", tot, counter)

    # 4 ------------------------------------------------------------------------------------------
    def check_two_processes(self) -> None:
        name = "two processes on one GPU"
        if not self.budget_left(name):
            return
        seconds = self.s(8.0)
        procs = [
            subprocess.Popen(
                self.burn_cmd(seconds, duty, "--wait-go"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=self.child_env(),
            )  # fmt: skip
            for duty in (1.0, 0.3)
        ]
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                self.add(name, "a worker did not start", "", None, "", "FAIL")
                for q in procs:
                    q.kill()
                    q.wait()
                return
        trackers = [Tracker(ProcessTreeMeter(p.pid), interval_s=1.0, rapl=False).start() for p in procs]
        e0 = self.counter_j()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in procs:
            p.wait()
        device = self.counter_j() - e0
        tots = [t.stop() for t in trackers]
        full, part = (t.energy.gpu_j for t in tots)
        for label, tot in (("full load", tots[0]), ("30 % load", tots[1])):
            got = tot.energy.gpu_j
            self.add(
                f"{name}: {label}",
                f"{got:.1f} J ({100 * got / device if device else 0:.0f} % of device)",
                f"device {device:.1f} J",
                None,
                "> 0",
                "ok" if got > 0 and tot.sources.attribution_gpu == "process" else "FAIL",
            )
        self.add(
            f"{name}: sum of shares",
            f"{full + part:.1f} J",
            f"device {device:.1f} J",
            pct(full + part, device),
            "<= device",
            "ok" if full + part <= device * 1.02 and full > part else "FAIL",
        )

    # 5 ------------------------------------------------------------------------------------------
    def check_visible_devices(self) -> None:
        name = "CUDA_VISIBLE_DEVICES"
        if not self.budget_left(name):
            return
        count = self.nvml.nvmlDeviceGetCount()
        uuid = self.uuid
        values = [None, "", "0", uuid, uuid[:12], str(count)]
        oracle = self.args.cuda_oracle or [
            sys.executable,
            "-c",
            "import torch; print(torch.cuda.device_count())",
        ]
        procs = []  # CUDA's view of each value, asked of fresh processes all at once (torch starts slowly)
        for value in values:
            env = self.child_env()
            env.pop("CUDA_VISIBLE_DEVICES", None)
            if value is not None:
                env["CUDA_VISIBLE_DEVICES"] = value
            procs.append(
                subprocess.Popen(oracle, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            )
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        try:
            for value, proc in zip(values, procs, strict=True):
                out, err = proc.communicate(timeout=180)
                cuda = int(out.strip().splitlines()[-1]) if proc.returncode == 0 and out.strip() else -1
                if value is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = value
                meter = nvml_meter.open_nvml()  # what we meter under that value
                ours = len(meter.names) if meter else 0
                if meter:
                    meter.close()
                shown = "unset" if value is None else repr(value)
                self.add(
                    f"{name}={shown}"[:44],
                    f"metered {ours} GPU(s)",
                    f"CUDA sees {cuda}" if cuda >= 0 else f"CUDA check failed: {err.strip()[-40:]}",
                    None,
                    "equal",
                    "ok" if ours == cuda else "FAIL",
                )
        finally:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved

    # 6 ------------------------------------------------------------------------------------------
    def check_fastsurfer_vinn(self) -> None:
        name = "FastSurferVINN (random weights)"
        if not self.budget_left(name):
            return
        import torch

        from mlflow_wattsup.analysis.models.fastsurfer_vinn import build

        batch, batches = (8, 32) if not self.args.quick else (1, 2)
        model = build("asegdkt", "coronal").to(self.device).eval()
        x = torch.randn(batch, 7, 256, 256, device=self.device)
        sync = torch.cuda.synchronize if self.device.startswith("cuda") else (lambda: None)
        with torch.no_grad():
            model(x)  # warm-up (cuDNN picks its algorithms)
            sync()
            tracker = Tracker(ProcessTreeMeter(), interval_s=1.0, rapl=False)
            e0 = self.counter_j()
            tracker.start()
            t0 = time.monotonic()
            for _ in range(batches):
                model(x)
            sync()
            wall = time.monotonic() - t0
            tot = tracker.stop()
        counter = self.counter_j() - e0
        slices = batch * batches
        s_per_slice = wall / slices
        self.add(
            f"{name}: time per slice",
            f"{1000 * s_per_slice:.1f} ms ({slices} slices, batch {batch})",
            f"{CPU_S_PER_SLICE} s on 2 CPU cores",
            None,
            "info",
            f"info: {CPU_S_PER_SLICE / s_per_slice:.0f}x the CPU",
        )
        self.add(
            f"{name}: energy per slice",
            f"{tot.machine_energy.gpu_j / slices:.2f} J (tracker)",
            f"counter {counter / slices:.2f} J",
            pct(tot.machine_energy.gpu_j, counter),
            "5 %",
            within(pct(tot.machine_energy.gpu_j, counter)),
        )

    # 3 and 7 with MLflow --------------------------------------------------------------------------
    def mlflow_parts(self) -> None:
        why = mlflow_missing()
        if why:
            self.add("MLflow parts (wattsup run, track(), mlflow run)", "", "", None, "", f"skipped: {why}")
            return
        tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        uri = f"sqlite:///{tmp}/mlflow.db"
        # carbon is not what is checked, and CodeCarbon's intensity tables are not on the lent machine
        os.environ.setdefault("WATTSUP_CARBON_INTENSITY", "475")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network there
        env = self.child_env()
        env.update(MLFLOW_TRACKING_URI=uri, WATTSUP_SPOOL_DIR=str(tmp / "spool"))
        try:
            if self.budget_left("wattsup run: GPU energy vs counter"):
                self._wattsup_run(env, uri, tmp)
            if self.budget_left("track(): GPU energy vs counter"):
                self._track(uri)
            if self.budget_left("mlflow run projects/segmentation -e train"):
                self._mlflow_run(env, uri, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _logged_totals(self, run):
        from types import SimpleNamespace

        m, tags = run.data.metrics, run.data.tags
        j = 3.6e6
        return SimpleNamespace(
            machine_energy=SimpleNamespace(gpu_j=m.get("machine_energy_gpu_kwh", 0.0) * j),
            energy=SimpleNamespace(gpu_j=m.get("energy_gpu_kwh", 0.0) * j),
            sources=SimpleNamespace(
                gpu=tags.get("wattsup.source.gpu"), attribution_gpu=tags.get("wattsup.gpu_attribution")
            ),
            warnings={k.rsplit(".", 1)[1]: v for k, v in tags.items() if k.startswith("wattsup.warning.")},
        )

    def _wattsup_run(self, env, uri, tmp: Path) -> None:
        """``wattsup run`` around the work; the counter is read by the command itself, first and last
        thing (wattsup's own start-up, MLflow's import included, is outside both windows)."""
        from mlflow.tracking import MlflowClient

        cmd = [sys.executable, "-m", "mlflow_wattsup", "run", "--experiment", "gpu-check", "--quiet", "--"]
        counters = tmp / "wattsup-run-counter.txt"
        work = self.burn_cmd(self.s(8.0), 1.0, "--counter-file", str(counters))
        p = subprocess.run([*cmd, *work], env=env, capture_output=True, text=True, timeout=300)
        if p.returncode != 0 or not counters.exists():
            self.add("wattsup run", f"exit {p.returncode}", p.stderr.strip()[-60:], None, "exit 0", "FAIL")
            return
        e0, e1 = (float(x) for x in counters.read_text().split())
        client = MlflowClient(uri)
        [run] = client.search_runs([client.get_experiment_by_name("gpu-check").experiment_id], max_results=1)
        self._tracked_rows("wattsup run", self._logged_totals(run), e1 - e0)

    def _track(self, uri) -> None:
        """``track()`` around the work; the counter read first and last thing in the block."""
        import mlflow_wattsup

        with mlflow_wattsup.track("gpu-check-track", experiment="gpu-check", tracking_uri=uri) as t:
            e0 = self.counter_j()
            burn(self.device, self.s(8.0))
            counter = self.counter_j() - e0
        self._tracked_rows("track()", t.totals, counter)

    def _mlflow_run(self, env, uri, tmp) -> None:
        from mlflow.tracking import MlflowClient

        name = "mlflow run projects/segmentation -e train"
        dev = "gpu" if self.device.startswith("cuda") else "cpu"
        cmd = [
            sys.executable, "-m", "mlflow", "run", str(REPO / "projects" / "segmentation"), "-e", "train",
            "--env-manager", "local", "--experiment-name", "gpu-check-segmentation",
            "-P", f"device={dev}", "-P", "epochs=2" if not self.args.quick else "epochs=1",
        ]  # fmt: skip
        e0 = self.counter_j()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp)
        counter = self.counter_j() - e0
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("gpu-check-segmentation")
        runs = client.search_runs([exp.experiment_id], max_results=1) if exp else []
        if p.returncode != 0 or not runs:
            self.add(
                name,
                f"exit {p.returncode}",
                (p.stderr.strip() or p.stdout.strip())[-60:],
                None,
                "exit 0",
                "FAIL",
            )
            return
        run = runs[0]
        m, tags = run.data.metrics, run.data.tags
        gpu_j = m.get("energy_gpu_kwh", 0.0) * 3.6e6
        machine_j = m.get("machine_energy_gpu_kwh", 0.0) * 3.6e6
        ok = (
            run.info.status == "FINISHED"
            and tags.get("wattsup.source.gpu") == "nvml-energy"
            and machine_j <= counter * 1.02
            and (gpu_j > 0 or dev == "cpu")
        )
        self.add(
            name,
            f"{gpu_j:.1f} J GPU ({tags.get('wattsup.source.gpu')}, {tags.get('wattsup.device')})",
            f"counter {counter:.1f} J",
            pct(machine_j, counter),
            "<= counter",
            "ok" if ok else "FAIL",
        )

    def run_all(self, only: set[str] | None = None) -> None:
        for name, fn in (
            ("power", self.check_counter_vs_power),
            ("interval", self.check_sampling_interval),
            ("tracker", self.check_tracker_in_process),
            ("runner", self.check_runner_child),
            ("shared", self.check_two_processes),
            ("visible", self.check_visible_devices),
            ("vinn", self.check_fastsurfer_vinn),
            ("mlflow", self.mlflow_parts),
        ):
            if only is None or name in only:
                try:
                    fn()
                except Exception as exc:  # one broken check must not hide the others' figures
                    self.add(f"{name}: error", f"{type(exc).__name__}: {exc}"[:60], "", None, "", "FAIL")


def mlflow_missing() -> str | None:
    """Why the MLflow parts cannot run here, or None."""
    try:
        if importlib.util.find_spec("mlflow") is None:
            return "MLflow not importable (carry its wheels: benchmarks/README.md)"
        import mlflow  # noqa: F401
    except Exception as exc:
        return f"MLflow not importable ({type(exc).__name__}: {exc}; carry its wheels: benchmarks/README.md)"
    return None


def header(nvml, h, device: str) -> None:
    name = nvml_meter._decode(nvml.nvmlDeviceGetName(h))
    driver = nvml_meter._decode(nvml.nvmlSystemGetDriverVersion())
    with contextlib.suppress(Exception):
        limit = nvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3
        name += f", power limit {limit:.0f} W"
    print(
        f"gpu_check: {name}, driver {driver}; work on {device}; Python {sys.version.split()[0]}", flush=True
    )
    print(f"  {'check':<44} {'figure':<28} {'reference':<30} {'diff':>9}  {'target':<10} verdict", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--burn"]:
        return _burn_main(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--device", default="auto", help="auto (CUDA), cuda, or cpu (torch work on the CPU stands in)"
    )
    p.add_argument("--quick", action="store_true", help="shorter phases (tests)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument(
        "--checks",
        help="comma-separated subset: power,interval,tracker,runner,shared,visible,vinn,mlflow (default: all)",
    )
    p.add_argument(
        "--cuda-oracle",
        nargs="+",
        help="command printing how many devices CUDA sees (default: torch, in a fresh process)",
    )
    args = p.parse_args(argv)
    meter = nvml_meter.open_nvml()
    if meter is None:
        print(f"gpu_check: {SKIPPED_NO_GPU} (no NVIDIA driver or device; nothing to validate here)")
        return 0
    meter.close()
    import pynvml as nvml  # nvidia-ml-py, present since open_nvml found a GPU

    nvml.nvmlInit()
    check = GpuCheck(args, nvml, "cpu")  # pins CUDA_VISIBLE_DEVICES before torch starts CUDA
    device = args.device
    if device in ("auto", "cuda"):
        import torch

        if not torch.cuda.is_available():
            print(
                "gpu_check: NVML sees a GPU but torch has no CUDA: install torch with CUDA, or --device cpu"
            )
            return 2
        device = "cuda:0"
    check.device = device
    header(nvml, check.handle, device)
    t0 = time.monotonic()
    check.run_all(set(args.checks.split(",")) if args.checks else None)
    fails = [r for r in check.rows if r.verdict == "FAIL"]
    idle = f"; idle power {check.idle_w:.0f} W" if check.idle_w is not None else ""
    print(
        f"gpu_check: {len(check.rows)} rows, {len(fails)} disagreeing, in {time.monotonic() - t0:.0f} s{idle}",
        flush=True,
    )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in check.rows], indent=1))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
