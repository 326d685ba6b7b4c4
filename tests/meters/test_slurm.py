"""SLURM's own energy accounting: the field formats SLURM documents and prints (sacct/sstat
--parsable2, ConsumedEnergy with K/M/G prefixes of 1000, scontrol's OverSubscribe), parsed without
a cluster; tests/integration/test_slurm_energy.py runs the same code against a real one."""

import os
import subprocess

import pytest
from support.fakes.procfs import FakeMachine, FakeTree

from mlflow_wattsup.meters import slurm
from mlflow_wattsup.meters.estimator import CpuPowerModel
from mlflow_wattsup.sink import keys
from mlflow_wattsup.tracking.tracker import Tracker


@pytest.mark.parametrize(
    "text, joules",
    [
        ("", None),  # a job's own row: sacct leaves it empty without an energy TRES
        ("0", 0.0),  # no AcctGatherEnergyType plugin
        ("2534", 2534.0),  # ConsumedEnergyRaw: joules
        ("1.50K", 1500.0),  # ConsumedEnergy: "%.2f%c" with a divisor of 1000 (not 1024)
        ("37.97M", 37.97e6),
        ("2G", 2e9),  # exact values lose their decimals
        ("1.25T", 1.25e12),
    ],
)
def test_consumed_energy_fields_in_joules(text, joules):
    assert slurm.parse_energy_j(text) == (pytest.approx(joules) if joules is not None else None)


@pytest.mark.parametrize("text", ["12Q", "-5", "n/a", "1.5KJ"])
def test_malformed_energy_is_an_error_naming_the_field(text):
    with pytest.raises(slurm.SlurmFormatError, match="ConsumedEnergyRaw="):
        slurm.parse_energy_j(text, "ConsumedEnergyRaw")


def test_parsable2_rows_as_documented_and_as_printed():
    # sstat(1)'s own example, as --parsable2 prints it (no '|' at the end)
    fields = ("AveCPU", "AvePages", "AveRSS", "AveVMSize", "JobID")
    assert slurm.parse_parsable2("25:02.000|0K|1.37M|5.93M|9.0\n", fields) == [
        {"AveCPU": "25:02.000", "AvePages": "0K", "AveRSS": "1.37M", "AveVMSize": "5.93M", "JobID": "9.0"}
    ]
    # what sacct printed on the test cluster (slurm 22.05, no energy plugin): the job row is empty
    text = "1|||COMPLETED\n1.batch|0|0|COMPLETED\nsacct: warning: something\n"
    rows = slurm.parse_parsable2(text, (*slurm.ENERGY_FIELDS, "State"))
    assert [r["JobID"] for r in rows] == ["1", "1.batch"]
    assert rows[1]["ConsumedEnergyRaw"] == "0"


@pytest.mark.parametrize(
    "env, step",
    [
        ({}, None),
        ({"SLURM_JOB_ID": "42"}, "42.batch"),  # a batch script has no SLURM_STEP_ID
        ({"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0"}, "42.0"),  # srun
        ({"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "4294967294"}, "42.batch"),
        ({"SLURM_JOBID": "7", "SLURM_STEPID": "3"}, "7.3"),  # the older names
    ],
)
def test_the_step_we_run_in(env, step):
    assert slurm.step_id(env) == step


# `scontrol show job -o` as the test cluster printed it (shortened), without and with --exclusive
SCONTROL = (
    "JobId=1 JobName=job.sh UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=1 Nice=0 "
    "Account=(null) QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 Restarts=0 "
    "BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:01 TimeLimit=UNLIMITED Partition=debug "
    "NodeList=localhost NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* "
    "TRES=cpu=1,mem=24105M,node=1,billing=1 OverSubscribe={over} Contiguous=0 Licenses=(null) "
    "Network=(null) Command=/tmp/my job.sh WorkDir=/tmp Power="
)


@pytest.mark.parametrize(
    "over, partition, kind",
    [
        ("OK", "NO", "shared"),  # the default: other jobs may run on the node's other cores
        ("NO", "NO", "exclusive"),  # sbatch --exclusive
        ("USER", "NO", "user-exclusive"),  # --exclusive=user
        ("MCS", "NO", "mcs-exclusive"),
        ("YES", "YES", "shared"),  # --oversubscribe
        ("OK", "EXCLUSIVE", "exclusive"),  # a partition that allocates whole nodes
        ("", "", "unknown"),
    ],
)
def test_allocation_and_its_share_rule(over, partition, kind):
    job = slurm.parse_scontrol(SCONTROL.format(over=over))
    assert job["Partition"] == "debug" and job["Command"] == "/tmp/my job.sh"
    alloc = slurm.allocation_from(job, {"OverSubscribe": partition})
    assert alloc.kind == kind
    if kind == "exclusive":
        assert "the node's energy is the job's" in alloc.rule
    else:
        assert "energy is the job's" not in alloc.rule


class Recorded:
    """Answers commands from a table: argv[0] -> (returncode, stdout, stderr)."""

    def __init__(self, **answers):
        self.answers = answers
        self.calls = []

    def __call__(self, cmd):
        self.calls.append(list(cmd))
        code, out, err = self.answers.get(cmd[0], (1, "", f"{cmd[0]}: not answered"))
        if callable(out):
            out = out()
        return subprocess.CompletedProcess(cmd, code, out, err)


def test_sstat_while_the_step_runs():
    run = Recorded(sstat=(0, "42.batch|183000|183K\n", ""))
    r = slurm.SlurmAccounting("42.batch", run).read()
    assert (r.energy_j, r.via) == (183000.0, "sstat")
    assert run.calls[0][:3] == ["sstat", "--noheader", "--parsable2"] and run.calls[0][-1] == "42.batch"


def test_sacct_once_the_step_has_ended():
    run = Recorded(
        sstat=(1, "", "sstat: error: couldn't get steps for job 42"),
        sacct=(0, "42.batch|2534|2.53K\n", ""),
    )
    r = slurm.SlurmAccounting("42.batch", run).read()
    assert (r.energy_j, r.via) == (2534.0, "sacct")


def test_zero_is_not_collected_never_zero_joules():
    run = Recorded(sstat=(0, "42.batch|0|0\n", ""))
    r = slurm.SlurmAccounting("42.batch", run).read()
    assert r.energy_j is None and "no AcctGatherEnergyType plugin" in r.note
    e = slurm.run_energy(r, r, slurm.Allocation("shared", "OverSubscribe=OK"))
    assert e.energy_j is None and e.source == "not collected"
    assert keys.slurm_metrics(e) == {}  # no slurm_energy_kwh = 0
    assert keys.slurm_tags(e)[keys.SOURCE_SLURM] == "not collected"


def test_neither_command_answering_is_not_collected_with_both_reasons():
    r = slurm.SlurmAccounting("42.batch", Recorded()).read()
    assert r.energy_j is None and "sstat" in r.note and "sacct" in r.note


def test_run_energy_is_the_difference_over_the_run_and_a_value_that_did_not_move_is_not_zero():
    alloc = slurm.Allocation("exclusive", "OverSubscribe=NO")
    a = slurm.StepReading("42.batch", 1000.0, "sstat")
    b = slurm.StepReading("42.batch", 4600.0, "sstat")
    e = slurm.run_energy(a, b, alloc)
    assert e.energy_j == 3600.0 and e.source == "slurm"
    assert keys.slurm_metrics(e) == {keys.SLURM_ENERGY_KWH: pytest.approx(0.001)}
    assert "the node's energy is the job's" in keys.slurm_tags(e)[keys.SLURM_ALLOCATION]
    same = slurm.run_energy(b, b, alloc)
    assert same.energy_j is None and "did not change" in same.detail


def test_allocation_reads_scontrol_then_the_partition():
    run = Recorded(
        scontrol=(0, SCONTROL.format(over="OK") + "\n", ""),
    )
    acct = slurm.SlurmAccounting("1.batch", run)
    assert acct.allocation().kind == "shared"
    assert ["scontrol", "show", "partition", "-o", "debug"] in run.calls


def test_open_slurm_only_inside_a_job():
    assert slurm.open_slurm({}) is None
    assert slurm.open_slurm({"SLURM_JOB_ID": "9"}, run=Recorded()).step == "9.batch"


def test_tracker_reads_the_step_at_start_and_end(tmp_path):
    values = iter(["42.batch|5000|5K\n", "42.batch|9200|9.20K\n"])
    run = Recorded(sstat=(0, lambda: next(values), ""), scontrol=(0, SCONTROL.format(over="NO"), ""))
    t = Tracker(
        FakeTree(pids=(os.getpid(),)), interval_s=3600.0, machine=FakeMachine(tmp_path),
        cpu_model=CpuPowerModel(5.0, "user-w-per-thread"), rapl=False, nvml=False, amdsmi=False,
        slurm=slurm.SlurmAccounting("42.batch", run),
    )  # fmt: skip
    t.start()
    tot = t.stop()
    assert tot.slurm.energy_j == 4200.0 and tot.slurm.allocation.kind == "exclusive"
    assert tot.energy.total_j < 4200.0  # SLURM's node figure is beside ours, never mixed in


def _described(metrics, tags):
    from mlflow_wattsup.report import run_note as description

    base = {"energy_kwh": 1e-3, "energy_cpu_kwh": 1e-3, "carbon_g": 0.4, "duration_s": 60.0}
    src = {"wattsup.source.cpu": "rapl", "wattsup.source.gpu": "none", "wattsup.source.ram": "rapl"}
    return description.run_markdown({**base, **metrics}, {}, {**src, **tags})


def test_the_run_description_shows_slurms_figure_and_its_share_rule():
    e = slurm.run_energy(
        slurm.StepReading("42.batch", 1000.0, "sstat"),
        slurm.StepReading("42.batch", 8200.0, "sstat"),
        slurm.Allocation("exclusive", "OverSubscribe=NO"),
    )
    text = _described(keys.slurm_metrics(e), keys.slurm_tags(e))
    assert "SLURM's accounting: 2 Wh (exclusive (OverSubscribe=NO): the node's energy is the job's)" in text
    none = slurm.run_energy(
        slurm.StepReading("42.batch", None, "sstat"),
        slurm.StepReading("42.batch", None, "sstat", "sstat reports ConsumedEnergyRaw=0"),
        slurm.Allocation("shared", "OverSubscribe=OK"),
    )
    assert (
        "SLURM's accounting: not collected (step 42.batch: sstat reports ConsumedEnergyRaw=0)"
        in _described(keys.slurm_metrics(none), keys.slurm_tags(none))
    )
