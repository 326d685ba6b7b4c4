"""``wattsup regions``: the carbon-intensity regions known offline."""

from __future__ import annotations

from mlflow_wattsup.cli.common import UsageError


def register(sub) -> None:
    regions = sub.add_parser(
        "regions",
        help="list the carbon-intensity regions known offline",
        description="List regions and their carbon intensity (g CO2eq/kWh) from "
        "CodeCarbon's offline tables, optionally filtered by QUERY.",
    )
    regions.add_argument("query", nargs="?", default="", help="case-insensitive filter")
    regions.set_defaults(func=main)


def main(args) -> int:
    from mlflow_wattsup.analysis.carbon import list_regions

    q = args.query.lower()
    rows = [r for r in list_regions() if q in r.region.lower()]
    for r in rows:
        print(f"{r.region:<40} {r.g_per_kwh:8.1f}  {r.source}")
    if not rows:
        raise UsageError(f"no region matches {args.query!r}")
    return 0
