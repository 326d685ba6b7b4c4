"""Parts every ``wattsup`` subcommand shares: the one-line error policy and option groups."""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2

#: the environment as the user gave it, for the commands we run (set by ``main``)
USER_ENV: dict[str, str] | None = None


_LINE_BREAKS = {
    c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)
}


def one_line(text: str) -> str:
    """``text`` with every character Python treats as a line break escaped (user input may hold
    any of them; our errors are one line)."""
    return text.translate(_LINE_BREAKS)


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def write_output(path: str | None, text: str, written: str = "written") -> None:
    """``text`` to the file ``--output`` names (``wattsup: <written> to <path>`` on stderr), else
    to stdout."""
    if path:
        with open(path, "w") as f:
            f.write(text)
        print(f"wattsup: {written} to {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def carbon_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("carbon")
    g.add_argument(
        "--region",
        help="electricity region for the carbon intensity, e.g. FRA, CA-QC, US-CA, "
        "gcp:europe-west1 ('wattsup regions' lists them; env WATTSUP_REGION)",
    )
    g.add_argument(
        "--carbon-intensity",
        metavar="G_PER_KWH",
        help="carbon intensity in g CO2eq/kWh; overrides --region (env WATTSUP_CARBON_INTENSITY)",
    )
    g.add_argument(
        "--pue",
        help="power usage effectiveness of the facility, >= 1 (default 1.0: IT energy only; env WATTSUP_PUE)",
    )


def meter_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("measurement")
    g.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="sampling interval in seconds (default 1)"
    )
    g.add_argument(
        "--cpu-tdp-w",
        type=float,
        metavar="W",
        help="package TDP for the CPU estimate when the model is unknown (env WATTSUP_CPU_TDP_W)",
    )
    g.add_argument(
        "--cpu-w-per-thread",
        type=float,
        metavar="W",
        help="watts per busy logical CPU for the estimate (env WATTSUP_CPU_W_PER_THREAD)",
    )
    g.add_argument(
        "--powercap-root",
        metavar="DIR",
        help="powercap sysfs root for RAPL (default /sys/class/powercap; env WATTSUP_POWERCAP_ROOT)",
    )


def mlflow_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MLflow")
    g.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    g.add_argument(
        "--experiment", help="experiment name for a new run (default: $MLFLOW_EXPERIMENT_NAME or Default)"
    )
    g.add_argument(
        "--run-id", help="log to this existing run (default: $MLFLOW_RUN_ID, as set by 'mlflow run')"
    )
    g.add_argument("--run-name", help="name of a new run (default: the command's name)")
    g.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="extra run tag (repeatable)"
    )


def log_target_options(p: argparse.ArgumentParser) -> None:
    """Where `dice`/`flops` log: a run, the `mlflow run` run, or a new one; or nowhere."""
    p.add_argument("--no-log", action="store_true", help="print only, log nothing to MLflow")
    p.add_argument("--run-id", help="log to this run (default: $MLFLOW_RUN_ID, else a new run)")
    p.add_argument("--experiment", help="experiment for a new run")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")


def group_by(text: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if not keys:
        raise UsageError("--group-by needs at least one name")
    return tuple(k[len("wattsup.") :] if k.startswith("wattsup.") else k for k in keys)


def int_list(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None


def parse_tags(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag {p!r} is not KEY=VALUE")
        out[key] = value
    return out
