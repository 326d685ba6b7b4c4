"""``wattsup flush``: replay values spooled while the tracking store was unreachable."""

from __future__ import annotations

import sys


def register(sub) -> None:
    flush = sub.add_parser(
        "flush",
        help="replay values spooled while the tracking store was unreachable",
        description="Send spool files left by runs that could not reach their "
        "tracking store (e.g. a job that died during an outage).",
    )
    flush.add_argument("--tracking-uri", help="send to this store instead of the one recorded in the spool")
    flush.add_argument(
        "--spool-dir", help="spool directory (default: $WATTSUP_SPOOL_DIR or the user cache dir)"
    )
    flush.set_defaults(func=main)


def main(args) -> int:
    from pathlib import Path

    from mlflow_wattsup.sink import replay_spools, spool_dir

    directory = Path(args.spool_dir) if args.spool_dir else spool_dir()
    done, left = replay_spools(directory, args.tracking_uri)
    if done == 0 and left == 0:
        print(f"wattsup: nothing to replay in {directory}", file=sys.stderr)
    return 0 if left == 0 else 1
