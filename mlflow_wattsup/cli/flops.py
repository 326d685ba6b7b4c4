"""``wattsup flops``: params, MACs and FLOPs of a torch model."""

from __future__ import annotations

import sys

from mlflow_wattsup.cli.common import UsageError, int_list, log_target_options


def register(sub) -> None:
    fl = sub.add_parser(
        "flops",
        help="parameters, MACs and FLOPs of a torch model, logged to a run",
        description="Count params, MACs and FLOPs (= 2 x MACs) of one forward pass with ptflops (ATen "
        "backend; ptflops' module backend and torch's FlopCounterMode as cross-checks) and log them "
        "with a per-layer CSV. The model comes from --model MODULE:CALLABLE (called with no "
        "arguments) or --model-uri (an MLflow PyTorch model).",
    )
    src = fl.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--model",
        metavar="MODULE:CALLABLE",
        help="e.g. mlflow_wattsup.analysis.models.fastsurfer_cnn:FastSurferCNN",
    )
    src.add_argument("--model-uri", help="e.g. runs:/<run_id>/model")
    fl.add_argument(
        "--input-shape",
        action="append",
        required=True,
        metavar="N,C,H,W",
        help="input shape with batch, comma-separated; repeat for several inputs",
    )
    fl.add_argument("--samples", type=int, help="samples seen in training: also log train_flops_estimate")
    log_target_options(fl)
    fl.set_defaults(func=main)


def _load_model(args):
    if args.model_uri:
        import mlflow.pytorch

        return mlflow.pytorch.load_model(args.model_uri, map_location="cpu")
    import importlib

    mod_name, sep, attr = args.model.partition(":")
    if not sep or not attr:
        raise UsageError(f"--model {args.model!r} is not MODULE:CALLABLE")
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load {args.model}: {exc}") from None
    from torch import nn

    if not isinstance(obj, nn.Module) and callable(obj):
        obj = obj()
    if not isinstance(obj, nn.Module):
        raise UsageError(f"{args.model} is not a torch.nn.Module nor a callable returning one")
    return obj


def main(args) -> int:
    shapes = [tuple(int_list(s, "--input-shape")) for s in args.input_shape]
    if any(not s or min(s) < 1 for s in shapes):
        raise UsageError("--input-shape needs positive sizes, batch included, e.g. 1,7,256,256")
    from mlflow_wattsup.analysis.flops import ModelCostError, model_cost

    model = _load_model(args)
    try:
        cost = model_cost(model, shapes if len(shapes) > 1 else shapes[0])
    except ModelCostError as exc:
        raise UsageError(str(exc)) from None
    print(f"params {cost.params:,} (trainable {cost.params_trainable:,})")
    print(f"MACs   {cost.macs:,} ({cost.macs / 1e9:.3f} G)  [{cost.backend}]")
    print(f"FLOPs  {cost.flops:,} (2 x MACs)")
    for b, m in cost.checks.items():
        print(
            f"  cross-check {b}: {m / 1e9:.3f} GMAC ({(m - cost.macs) / cost.macs:+.2%})"
            if cost.macs
            else f"  {b}: {m}"
        )
    for b, e in cost.errors.items():
        print(f"  {b} failed: {e}")
    if args.samples is not None:
        print(
            f"train_flops_estimate {cost.train_flops_estimate(args.samples):.4g} (3 x forward FLOPs x "
            f"{args.samples} samples)"
        )
    if not args.no_log:
        from mlflow_wattsup.run.log import log_cost, target_run

        with target_run(args.run_id, args.experiment, type(model).__name__, args.tracking_uri) as sink:
            log_cost(cost, sink, args.samples)
            print(f"logged to run {sink.run_id}", file=sys.stderr)
    return 0
