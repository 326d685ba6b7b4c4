"""The ``wattsup`` command line, one module per subcommand (each has ``register(sub)``
adding its parser with ``func`` set, and the function it runs).

Every error a user can cause ends in one line on stderr and exit code 2 (``--debug`` shows the
traceback). ``wattsup run`` passes the wrapped command's exit code through. Importing this package
and a subcommand's module is cheap (argparse only); each command imports what it needs when it runs.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from mlflow_wattsup import __version__
from mlflow_wattsup.cli import common
from mlflow_wattsup.cli.common import EXIT_USAGE, Parser, UsageError, one_line

#: subcommand modules, in the order ``wattsup --help`` lists them
COMMANDS = ("run", "dice", "agree", "flops", "report", "plot", "imports", "regions", "flush", "study")


def build_parser() -> Parser:
    parser = Parser(
        prog="wattsup",
        description="Log the energy, carbon and runtime of commands and pipelines to MLflow.",
        epilog="Metric, param and tag names: docs/metrics.md. Every energy figure carries its source "
        "(rapl, nvml-energy, nvml-power, estimate) in a wattsup.source.* tag.",
    )
    parser.add_argument("--version", action="version", version=f"mlflow-wattsup {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    common.USER_ENV = dict(os.environ)  # what the commands we run get
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # we never phone home, nor does MLflow for us
    replaying = None
    if args.command != "flush":  # values an earlier job could not deliver: replayed while we work
        from mlflow_wattsup.sink.spool import leftover_spools

        if leftover_spools():  # the replay (and the writer it brings) imported only when needed
            from mlflow_wattsup.sink.replay import replay_leftovers_in_background

            replaying = replay_leftovers_in_background()
    try:
        return _run(args)
    finally:
        if replaying is not None:
            replaying(LEFTOVER_WAIT_S)


#: how long a command waits at its end for the replay of earlier jobs' spool files
LEFTOVER_WAIT_S = 30.0


def _run(args) -> int:
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        if args.debug:
            raise
        print(f"wattsup {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as exc:
        if args.debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"wattsup {args.command}: error: {one_line(msg)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # not the user's input: one line still, exit 1, details with --debug
        if args.debug:
            raise
        msg = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(
            f"wattsup {args.command}: error: {type(exc).__name__}: {msg} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 1
