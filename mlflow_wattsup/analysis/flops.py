"""Model complexity: parameters, MACs and FLOPs of a torch model's forward pass.

Conventions (also in docs/metrics.md):

* ``macs`` - multiply-accumulates of one forward pass on the given input (batch included);
  ``flops = 2 x macs`` (one multiply and one add per MAC).
* ``train_flops_estimate = 3 x forward FLOPs x samples seen``: backward costs about twice the
  forward (measured 3.00x forward+backward/forward for FastSurferCNN and U-Net with
  ``FlopCounterMode``); the optimizer step is not counted.

Counters, each run on the same input with gradients off and the model's training mode restored:

* ``ptflops-aten`` (default figure): ptflops' ATen backend counts convolution (2D/3D,
  transposed) and matrix products, bias included: exact for conv/linear networks.
* ``ptflops-pytorch``: ptflops' module-hook backend, counting also norms, activations and
  pooling; treats some modules as zero-cost (e.g. ``MaxUnpool2d``) and misses functional convs.
* ``torch-flop-counter``: ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs, halved here to
  MACs; no bias). It also gives the per-layer table.

The figure comes from the first of ``backends`` that succeeds; the others are cross-checks. No
counter writes to stdout (ptflops does by default; it is given a private stream).
"""

from __future__ import annotations

import contextlib
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

DEFAULT_BACKENDS = ("ptflops-aten", "ptflops-pytorch", "torch-flop-counter")
TRAIN_FLOPS_FACTOR = 3


class ModelCostError(ValueError):
    """No counter could measure the model; ``str(exc)`` is one line."""


@dataclass(frozen=True)
class LayerCost:
    """One leaf module: ``macs`` from FlopCounterMode (conv/matmul, no bias), ``params`` its own."""

    name: str
    type: str
    params: int
    macs: int


@dataclass(frozen=True)
class ModelCost:
    params: int
    params_trainable: int
    macs: int
    backend: str
    input_shapes: tuple[tuple[int, ...], ...]
    checks: dict[str, int] = field(default_factory=dict)  # backend -> MACs
    errors: dict[str, str] = field(default_factory=dict)  # backend -> why it failed
    layers: tuple[LayerCost, ...] = ()
    passes: int = 1  # forward passes counted in ``macs`` (e.g. one per slice of a volume)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def times(self, passes: int) -> ModelCost:
        """The cost of ``passes`` forward passes on the same input shape."""
        import dataclasses

        return dataclasses.replace(
            self,
            macs=self.macs * passes,
            passes=self.passes * passes,
            checks={k: v * passes for k, v in self.checks.items()},
        )

    def train_flops_estimate(self, samples: int) -> int:
        """FLOPs of training on ``samples`` samples, if one pass is one sample."""
        return TRAIN_FLOPS_FACTOR * (self.flops // self.passes) * samples

    def layers_csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["module", "type", "params", "macs_torch_flop_counter"])
        for lay in self.layers:
            w.writerow([lay.name, lay.type, lay.params, lay.macs])
        return out.getvalue()


def _cpu_attention_formulas() -> dict:
    """FLOPs of CPU scaled-dot-product attention, which ``FlopCounterMode`` leaves uncounted (it
    knows only the CUDA kernels): the same two matrix products as its own formula."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    out = {}
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if fwd is not None and hasattr(fc, "sdpa_flop_count"):
        out[fwd] = lambda q, k, v, *args, out_shape=None, **kw: fc.sdpa_flop_count(q, k, v)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if bwd is not None and hasattr(fc, "sdpa_backward_flop_count"):
        out[bwd] = lambda g, q, k, v, *args, out_shape=None, **kw: fc.sdpa_backward_flop_count(g, q, k, v)
    return out


class FlopCount:
    """Filled in by :func:`counting`: MACs of every torch op run in the block, and of those the
    ones whose weight operand was an exact zero (when the weights were named)."""

    backend = "torch-flop-counter"

    def __init__(self) -> None:
        self.flops = 0
        self.zero_weight_flops = 0

    @property
    def macs(self) -> int:
        return self.flops // 2

    @property
    def macs_zero_weight(self) -> int:
        """MACs that multiplied by a weight entry equal to 0 (e.g. pruned)."""
        return round(self.zero_weight_flops / 2)

    @property
    def macs_nonzero(self) -> int:
        """MACs of nonzero weights: ``macs`` minus the MACs whose weight entry is 0."""
        return self.macs - self.macs_zero_weight


#: the weight operand of each counted op (F.linear is addmm(bias, x, W^T) or mm(x, W^T))
_WEIGHT_ARG = {"convolution": 1, "_convolution": 1, "cudnn_convolution": 1, "convolution_overrideable": 1}
_WEIGHT_ARG.update({"_slow_conv2d_forward": 1, "mm": 1, "bmm": 1, "addmm": 2, "baddbmm": 2})


def _storage(t) -> int | None:
    try:
        return t.untyped_storage().data_ptr()
    except Exception:  # tensor subclasses without storage
        return None


def _zero_counter(weights: Sequence[nn.Module], result: FlopCount):
    """A FlopCounterMode that also adds, for every conv/matmul whose weight operand is a parameter
    of ``weights``, the op's FLOPs times the fraction of that operand's entries equal to 0 (the
    counter's formulas count every weight entry once per output position, so this is exactly the
    arithmetic spent on zero weights)."""
    from torch.utils.flop_counter import FlopCounterMode

    storages = {s for m in weights for p in m.parameters() if (s := _storage(p)) is not None}

    class _Counter(FlopCounterMode):
        def _count_flops(self, func_packet, out, args, kwargs):
            out = super()._count_flops(func_packet, out, args, kwargs)
            pos = _WEIGHT_ARG.get(getattr(func_packet, "__name__", ""))
            w = args[pos] if pos is not None and len(args) > pos else None
            if isinstance(w, torch.Tensor) and w.numel() and _storage(w) in storages:
                zeros = w.numel() - int(torch.count_nonzero(w))
                if zeros:
                    flops = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
                    result.zero_weight_flops += flops * zeros / w.numel()
            return out

    return _Counter(display=False, custom_mapping=_cpu_attention_formulas())


@contextlib.contextmanager
def counting(*weights: nn.Module):
    """Count the FLOPs of whatever torch code runs in the block (``FlopCounterMode``; also
    TorchScript models), e.g. a whole inference pipeline, at no extra forward pass::

        with counting(model) as c:
            run_inference()
        c.macs, c.macs_nonzero

    ``weights``: the models whose parameters are weights: the MACs spent on their zero entries
    (a pruned network's) are counted too, so ``c.macs_nonzero`` is the arithmetic on nonzero
    weights. Without them ``macs_nonzero`` equals ``macs``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    result = FlopCount()
    counter = (
        _zero_counter(weights, result)
        if weights
        else FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas())
    )
    with counter:
        yield result
    result.flops = int(counter.get_total_flops())


def _as_inputs(model: nn.Module, input_shape, example_inputs) -> tuple[tuple, dict]:
    if example_inputs is not None:
        if isinstance(example_inputs, dict):
            return (), dict(example_inputs)
        if isinstance(example_inputs, torch.Tensor):
            return (example_inputs,), {}
        return tuple(example_inputs), {}
    if input_shape is None:
        raise ModelCostError("give input_shape (e.g. (1, 7, 256, 256)) or example_inputs")
    shapes = [input_shape] if isinstance(input_shape[0], int) else list(input_shape)
    try:
        p = next(model.parameters())
        dtype, device = p.dtype, p.device
    except StopIteration:
        dtype, device = torch.float32, torch.device("cpu")
    return tuple(torch.zeros(tuple(int(d) for d in s), dtype=dtype, device=device) for s in shapes), {}


def _shapes(args: tuple, kwargs: dict) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(t.shape) for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor))


class _Call(nn.Module):
    """Calls ``model(*args, **kwargs)`` from an argument-less forward (ptflops passes one input)."""

    def __init__(self, model: nn.Module, args: tuple, kwargs: dict):
        super().__init__()
        self.model = model
        self._args, self._kwargs = args, kwargs

    def forward(self) -> Any:
        return self.model(*self._args, **self._kwargs)


def _ptflops(model: nn.Module, args: tuple, kwargs: dict, backend: str) -> int:
    from ptflops import get_model_complexity_info

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        macs, _ = get_model_complexity_info(
            _Call(model, args, kwargs),
            (1,),
            input_constructor=lambda _: {},
            print_per_layer_stat=False,
            as_strings=False,
            ost=sink,
            verbose=False,
            backend=backend,
            backend_specific_config={"count_functional": False} if backend == "pytorch" else {},
        )
    if macs is None:
        lines = [ln for ln in sink.getvalue().splitlines() if ln.strip()]
        raise ModelCostError(lines[-1] if lines else "ptflops failed")
    return int(macs)


def _flop_counter(model: nn.Module, args: tuple, kwargs: dict) -> tuple[int, tuple[LayerCost, ...]]:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, depth=None, custom_mapping=_cpu_attention_formulas())
    with counter:
        model(*args, **kwargs)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    layers = []
    for name, mod in model.named_modules():
        if name == "" or any(True for _ in mod.children()):
            continue
        flops = sum(counts.get(f"{root}.{name}", {}).values())
        params = sum(p.numel() for p in mod.parameters(recurse=False))
        layers.append(LayerCost(name, type(mod).__name__, params, flops // 2))
    return counter.get_total_flops() // 2, tuple(layers)


def _set_training(model: nn.Module, mode: bool) -> None:
    """train()/eval() where supported (exported graph modules refuse both and stay as traced)."""
    if model.training != mode:
        try:
            model.train(mode)
        except NotImplementedError:
            pass


def model_cost(
    model: nn.Module,
    input_shape: Sequence[int] | Sequence[Sequence[int]] | None = None,
    example_inputs: Any = None,
    backends: Sequence[str] = DEFAULT_BACKENDS,
) -> ModelCost:
    """Parameters and MACs of one forward pass of ``model``.

    ``input_shape``: the full input shape, batch included (e.g. ``(1, 7, 256, 256)``), or a list
    of shapes for a model with several inputs; or ``example_inputs``: a tensor, a tuple of
    positional inputs, or a dict of keyword inputs.
    """
    if not isinstance(model, nn.Module):
        raise ModelCostError(f"expected a torch.nn.Module, got {type(model).__name__}")
    unknown = set(backends) - set(DEFAULT_BACKENDS)
    if unknown:
        raise ModelCostError(
            f"unknown FLOPs backend(s) {sorted(unknown)}; choose from {list(DEFAULT_BACKENDS)}"
        )
    args, kwargs = _as_inputs(model, input_shape, example_inputs)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    was_training = model.training
    checks: dict[str, int] = {}
    errors: dict[str, str] = {}
    layers: tuple[LayerCost, ...] = ()
    try:
        _set_training(model, False)
        with torch.no_grad():
            for b in dict.fromkeys([*backends, "torch-flop-counter"]):  # the table needs the last
                try:
                    if b == "torch-flop-counter":
                        checks[b], layers = _flop_counter(model, args, kwargs)
                    else:
                        checks[b] = _ptflops(model, args, kwargs, b.split("-", 1)[1])
                except Exception as exc:  # a counter failing is a cross-check lost, not an error
                    errors[b] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        _set_training(model, was_training)
    chosen = next((b for b in backends if b in checks), None)
    if chosen is None:
        raise ModelCostError(
            "no FLOPs counter could run the model: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
        )
    return ModelCost(
        params=params,
        params_trainable=trainable,
        macs=checks[chosen],
        backend=chosen,
        input_shapes=_shapes(args, kwargs),
        checks={k: v for k, v in checks.items() if k != chosen},
        errors=errors,
        layers=layers,
    )
