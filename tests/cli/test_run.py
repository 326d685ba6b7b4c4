import os
import signal
import subprocess
import sys
import time

import pytest
from support.helpers import WATTSUP, busy_sh, only_run, parse_times, perl_burn, wattsup

CORE_METRICS = {
    "duration_s",
    "energy_kwh",
    "energy_cpu_kwh",
    "energy_gpu_kwh",
    "energy_ram_kwh",
    "carbon_g",
    "power_mean_w",
    "cpu_time_s",
    "machine_energy_kwh",
}
CORE_PARAMS = {"wattsup.pue", "wattsup.carbon_intensity_g_per_kwh", "wattsup.region"}
CORE_TAGS = {
    "wattsup.source.cpu",
    "wattsup.source.gpu",
    "wattsup.source.ram",
    "wattsup.cpu_model",
    "wattsup.gpus",
    "wattsup.version",
}


@pytest.mark.slow
def test_busy_python_command_lands_in_a_run(tracking_uri, client, experiment, tmp_path):
    busy = "import time\nt=time.process_time()\nwhile time.process_time()-t<2.5: pass\nprint('done')"
    r = wattsup(
        "run",
        "--experiment",
        experiment,
        "--region",
        "FRA",
        "--pue",
        "1.2",
        "--",
        sys.executable,
        "-c",
        busy,
        env={"WATTSUP_POWERCAP_ROOT": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    assert "done" in r.stdout  # the command's output is streamed through
    run = only_run(client, experiment)
    m, p, t = run.data.metrics, run.data.params, run.data.tags
    assert CORE_METRICS <= set(m)
    assert CORE_PARAMS <= set(p)
    assert CORE_TAGS <= set(t)
    assert t["wattsup.source.cpu"] == "estimate"  # no readable RAPL here
    assert t["wattsup.source.gpu"] == "none"
    assert p["wattsup.estimate.cpu_model"] == "w_per_thread x cpu_seconds"
    assert run.info.status == "FINISHED"
    assert m["cpu_time_s"] == pytest.approx(2.5, abs=0.4)
    w = float(p["wattsup.estimate.cpu_w_per_thread"])
    assert m["energy_cpu_kwh"] * 3.6e6 == pytest.approx(w * m["cpu_time_s"], rel=1e-6)
    assert m["energy_kwh"] == pytest.approx(m["energy_cpu_kwh"] + m["energy_gpu_kwh"] + m["energy_ram_kwh"])
    assert m["carbon_g"] == pytest.approx(
        m["energy_kwh"] * 1.2 * float(p["wattsup.carbon_intensity_g_per_kwh"])
    )
    assert p["wattsup.region"] == "FRA" and p["wattsup.pue"] == "1.2"
    assert m["machine_energy_kwh"] >= m["energy_cpu_kwh"] * 0.99
    series = client.get_metric_history(run.info.run_id, "system/wattsup_power_w")
    assert len(series) >= 2 and [s.step for s in series] == sorted({s.step for s in series})
    assert "wattsup: FINISHED" in r.stderr and "[estimate]" in r.stderr


def test_machine_without_rapl_says_estimate():
    if os.path.isdir("/sys/class/powercap"):
        pytest.skip("this machine has a powercap tree")
    from mlflow_wattsup.tracking.tracker import Tracker

    assert Tracker(rapl=None, nvml=False).sources.cpu == "estimate"


def test_exit_code_passes_through_and_run_failed(tracking_uri, client, experiment):
    r = wattsup("run", "--experiment", experiment, "--quiet", "--", "sh", "-c", "echo oops >&2; exit 7")
    assert r.returncode == 7
    assert "oops" in r.stderr
    run = only_run(client, experiment)
    assert run.info.status == "FAILED"
    assert run.data.tags["wattsup.exit_code"] == "7"
    assert "energy_kwh" in run.data.metrics


def test_command_not_found_is_one_line_and_127(tracking_uri, experiment):
    r = wattsup("run", "--experiment", experiment, "--quiet", "--", "no-such-program-xyz")
    assert r.returncode == 127
    assert r.stderr.strip().splitlines() == [
        "wattsup run: error: cannot run 'no-such-program-xyz': No such file or directory"
    ]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--pue", "0.5", "--", "true"], "PUE"),
        (["run", "--region", "Atlantis", "--", "true"], "Atlantis"),
        (["run", "--interval", "0", "--", "true"], "--interval"),
        (["run", "--interval", "abc", "--", "true"], "--interval"),
        (["run"], "no command"),
        (["run", "--tag", "novalue", "--", "true"], "KEY=VALUE"),
        (["nosuchsub"], "invalid choice"),
    ],
)
def test_bad_options_one_line_exit_2(tracking_uri, args, needle):
    r = wattsup(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr


def test_arguments_reach_command_intact_without_shell(tracking_uri, experiment, tmp_path):
    out = tmp_path / "argv.txt"
    tricky = ["a b", "it's", '"quoted"', "x; rm -rf /", "$(whoami)", "*"]
    code = f"import sys; open({str(out)!r}, 'w').write(repr(sys.argv[1:]))"
    r = wattsup("run", "--experiment", experiment, "--quiet", "--", sys.executable, "-c", code, *tricky)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == repr(tricky)


def test_logs_to_the_active_run_and_leaves_it_open(tracking_uri, client, experiment):
    exp_id = client.create_experiment(experiment)
    run_id = client.create_run(exp_id).info.run_id
    r = wattsup("run", "--quiet", "--tag", "pipeline=demo", "--", "true", env={"MLFLOW_RUN_ID": run_id})
    assert r.returncode == 0, r.stderr
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"  # the owner of the run (e.g. mlflow run) ends it
    assert "energy_kwh" in run.data.metrics and run.data.tags["pipeline"] == "demo"


@pytest.mark.slow
def test_child_sees_the_run(tracking_uri, client, experiment):
    code = "import mlflow; mlflow.start_run(); mlflow.log_metric('loss', 0.25); mlflow.end_run()"
    r = wattsup("run", "--experiment", experiment, "--quiet", "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    run = only_run(client, experiment)  # the child's own logging joined our run
    assert run.data.metrics["loss"] == 0.25 and "energy_kwh" in run.data.metrics


def _cpu_of(experiment, client, script, times_file):
    r = wattsup(
        "run", "--experiment", experiment, "--quiet", "--", "sh", "-c", f"{script}; times > {times_file}"
    )
    assert r.returncode == 0, r.stderr
    return only_run(client, experiment).data.metrics["cpu_time_s"], parse_times(times_file.read_text())


@pytest.mark.slow
def test_thirty_short_children_count_as_much_as_one_long_one(tracking_uri, client, experiment, tmp_path):
    short, short_truth = _cpu_of(experiment + "-short", client, perl_burn(30, 30), tmp_path / "short")
    long, long_truth = _cpu_of(experiment + "-long", client, perl_burn(30, 1), tmp_path / "long")
    assert long > 2.5
    assert short == pytest.approx(long, rel=0.05)
    # and each equals what the kernel says the shell's children used (shell `times`)
    assert short == pytest.approx(short_truth, rel=0.02, abs=0.03)
    assert long == pytest.approx(long_truth, rel=0.02, abs=0.03)


@pytest.mark.slow
def test_daemonised_grandchild_is_adopted_and_counted(tracking_uri, client, experiment):
    # a subshell starts a grandchild in the background and exits at once: the grandchild is
    # orphaned and re-parented to wattsup (subreaper) instead of init, so its CPU time still
    # belongs to the run (without the subreaper it would be lost: the command itself only sleeps)
    # The grandchild burns 0.5 CPU-s defined in CPU time (perl_burn), not in loop iterations: a
    # dash loop's CPU per iteration differs by 2x between these machines (0.25 vs ~0.5 CPU-s for
    # 300,000 iterations), which made a fixed threshold fail on the faster one.
    script = f"({perl_burn(5, 1)} &) ; sleep 4"
    r = wattsup("run", "--experiment", experiment, "--quiet", "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert only_run(client, experiment).data.metrics["cpu_time_s"] > 0.45


def _default_signals():
    # as a foreground job gets them: a test runner started in the background has SIGINT ignored,
    # which wattsup (like the command alone) would rightly keep ignoring
    for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


def _start(experiment, *cmd):
    env = dict(os.environ)
    return subprocess.Popen(
        [*WATTSUP, "run", "--experiment", experiment, "--", *cmd],
        env=env,
        start_new_session=True,
        preexec_fn=_default_signals,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_run(client, experiment, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        exp = client.get_experiment_by_name(experiment)
        if exp and client.search_runs([exp.experiment_id]):
            return
        time.sleep(0.2)
    raise AssertionError("run never appeared")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_is_forwarded_and_partial_totals_logged(tracking_uri, client, experiment, tmp_path, sig):
    marker = tmp_path / "got-signal"
    # the child traps the signal, records it, and exits like a killed process would
    script = (
        f"trap 'echo got > {marker}; exit {128 + sig}' {sig.name[3:]}; while true; do {busy_sh(20_000)}; done"
    )
    proc = _start(experiment, "sh", "-c", script)
    try:
        _wait_for_run(client, experiment)
        time.sleep(2.0)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # never leave a busy loop behind to skew later measurements
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert marker.read_text().strip() == "got"
    run = only_run(client, experiment)
    assert run.info.status == "KILLED"
    assert run.data.metrics["duration_s"] > 1.5 and run.data.metrics["cpu_time_s"] > 0.5
    assert run.data.metrics["energy_kwh"] > 0


@pytest.mark.slow
def test_ignored_signal_stays_ignored_like_for_the_command_alone(tracking_uri, client, experiment, tmp_path):
    """Started with SIGHUP ignored (nohup), wattsup and its command keep ignoring it."""

    def ignore_hup():
        _default_signals()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc = subprocess.Popen(
        [*WATTSUP, "run", "--experiment", experiment, "--", "sh", "-c", "sleep 3"],
        start_new_session=True,
        preexec_fn=ignore_hup,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_run(client, experiment)
        proc.send_signal(signal.SIGHUP)
        os.killpg(proc.pid, signal.SIGHUP)  # the whole group, as a closing terminal would
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert only_run(client, experiment).info.status == "FINISHED"


def test_child_killed_by_signal_gives_128_plus_signal(tracking_uri, client, experiment):
    r = wattsup("run", "--experiment", experiment, "--quiet", "--", "sh", "-c", "kill -KILL $$")
    assert r.returncode == 128 + 9
    assert only_run(client, experiment).info.status == "KILLED"


@pytest.mark.slow
def test_on_a_terminal_status_line_and_the_command_reads_the_terminal(tracking_uri, client, experiment):
    """Under a pseudo-terminal: the command (in its own process group) is given the terminal, so
    it can read from it, and wattsup shows its live status line ([wattsup] ... W ... Wh ... g)."""
    import pty
    import select

    script = "sleep 1.5; read line; echo got:$line"
    pid, fd = pty.fork()
    if pid == 0:  # child: becomes wattsup, on the terminal
        os.execvpe(
            WATTSUP[0],
            [*WATTSUP, "run", "--experiment", experiment, "--interval", "0.5", "--", "sh", "-c", script],
            dict(os.environ),
        )
    out = b""
    deadline = time.time() + 60
    sent = False
    while time.time() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not sent and b"[wattsup]" in out:
            os.write(fd, b"hello\n")
            sent = True
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "got:hello" in text
    assert "[wattsup] 0:00:0" in text and " Wh " in text and "g CO2eq (estimate)" in text
    assert only_run(client, experiment).info.status == "FINISHED"
