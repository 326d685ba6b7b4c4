"""Pruning a trained network, and what it changes: parameters and MACs, dense and nonzero.

Two methods, both choosing what to drop with ``torch.nn.utils.prune``'s own criteria:

* :func:`prune_unstructured` - L1 unstructured, per conv layer: in every convolution's weight the
  ``amount`` fraction of entries with the smallest absolute value become 0
  (``torch.nn.utils.prune.L1Unstructured``), made permanent (no mask re-parametrisation is left:
  the pruned network runs exactly as the dense one, on a weight tensor of the same shape).
  The arithmetic on nonzero weights falls; the dense kernels do the same work as before.
* :func:`prune_channels` - structured: inside an ``nn.Sequential``, a convolution followed
  (possibly through channel-wise modules: norms, activations, dropout) by another convolution
  loses the ``amount`` fraction of its output channels with the smallest L1 norm
  (``torch.nn.utils.prune.LnStructured(n=1, dim=<output channels>)``), and the next convolution
  loses the matching input channels. The channels are *removed* (smaller weight tensors), so the
  dense kernels get cheaper. In a Sequential an output feeds only the next module, so removing
  these channels changes no shape outside the pair; anything else (skip connections,
  concatenations, grouped convolutions) is left alone.

Both work on plain modules, TorchScript modules (deepbet's traced networks) and the graph modules
``torch.export`` gives back (no module structure: every ``*weight`` parameter of 3 to 5
dimensions is a conv kernel; structured pruning then finds nothing to prune).

Counting: :func:`weight_counts` (parameters, nonzero parameters); MACs of nonzero weights come
from :func:`mlflow_wattsup.analysis.flops.counting` (``macs_nonzero``), or
:func:`zero_weight_macs` for one forward pass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

CONV_TYPES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")
#: modules that act on each channel alone: channel pruning may pass through them (their per-channel
#: parameters and buffers are cut to the kept channels)
CHANNELWISE_TYPES = (
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "ReLU",
    "ReLU6",
    "LeakyReLU",
    "ELU",
    "GELU",
    "SiLU",
    "Sigmoid",
    "Tanh",
    "PReLU",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "Identity",
)


class PruneError(ValueError):
    """A pruning request the model cannot satisfy; ``str(exc)`` is one line."""


@dataclass(frozen=True)
class PruneResult:
    method: str  # "l1-unstructured" or "l1-channels"
    amount: float
    tensors: int  # conv weights pruned (unstructured) or conv pairs cut (channels)
    removed: int  # weights set to zero (unstructured) or channels removed (channels)

    def describe(self) -> str:
        if self.method == "l1-unstructured":
            return (
                f"L1 unstructured {self.amount:g} per conv layer (torch.nn.utils.prune.L1Unstructured, "
                f"made permanent): {self.removed} weights zeroed in {self.tensors} conv weights"
            )
        return (
            f"L1 channels {self.amount:g} (torch.nn.utils.prune.LnStructured n=1 over output channels, "
            f"channels removed): {self.removed} channels cut from {self.tensors} conv pairs in Sequentials"
        )


def _type(mod: nn.Module) -> str:
    """The module's class name; for a TorchScript module, the class it was made from."""
    return getattr(mod, "original_name", None) or type(mod).__name__


def _check_amount(amount: float, what: str, below_one: bool = False) -> float:
    amount = float(amount)
    top_ok = amount < 1 if below_one else amount <= 1
    if not (amount >= 0 and top_ok):
        raise PruneError(f"{what}={amount!r} must be a fraction from 0 to {'below 1' if below_one else '1'}")
    return amount


def conv_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of every convolution of ``model``; for a module without conv submodules
    (a ``torch.export`` graph), every parameter named ``*weight`` with 3 to 5 dimensions."""
    out = []
    for name, mod in model.named_modules():
        if _type(mod) in CONV_TYPES:
            w = dict(mod.named_parameters(recurse=False)).get("weight")
            if w is not None:
                out.append((f"{name}.weight" if name else "weight", w))
    if out:
        return out
    return [
        (n, p)
        for n, p in model.named_parameters()
        if (n == "weight" or n.endswith(".weight")) and 3 <= p.dim() <= 5
    ]


def prune_unstructured(models: nn.Module | Iterable[nn.Module], amount: float) -> PruneResult:
    """Zero the ``amount`` fraction of smallest-magnitude entries of every conv weight, layer by
    layer, in place (see module doc). ``amount`` 0 changes nothing."""
    amount = _check_amount(amount, "prune")
    models = [models] if isinstance(models, nn.Module) else list(models)
    weights = [w for m in models for _, w in conv_weights(m)]
    if not weights:
        raise PruneError("prune: the model has no convolution weights to prune")
    removed = 0
    if amount > 0:
        method = torch_prune.L1Unstructured(amount)
        with torch.no_grad():
            for w in weights:
                mask = method.compute_mask(w, default_mask=torch.ones_like(w))
                before = int(torch.count_nonzero(w))
                w.mul_(mask)
                removed += before - int(torch.count_nonzero(w))
    return PruneResult("l1-unstructured", amount, len(weights), removed)


def _children(mod: nn.Module) -> list[nn.Module]:
    return [c for _, c in mod.named_children()]


def _groups(mod: nn.Module) -> int | None:
    """A conv's groups: the attribute, else read from a traced module's code; None if unknown."""
    g = getattr(mod, "groups", None)
    if isinstance(g, int):
        return g
    try:
        code = mod.code
    except Exception:
        return None
    # torch._convolution(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups, ...)
    m = re.search(
        r"_convolution\([^,]+, [^,]+, [^,]+, \[[^\]]*\], \[[^\]]*\], \[[^\]]*\], \w+, \[[^\]]*\], (\d+),",
        code,
    )
    return int(m.group(1)) if m else None


def _pairs(model: nn.Module) -> list[tuple[nn.Module, list[nn.Module], nn.Module]]:
    """(conv A, channel-wise modules between, conv B) inside every Sequential of ``model``."""
    found = []
    for _, seq in model.named_modules():
        if _type(seq) != "Sequential":
            continue
        kids = _children(seq)
        for i, a in enumerate(kids):
            if _type(a) not in CONV_TYPES:
                continue
            between = []
            for b in kids[i + 1 :]:
                if _type(b) in CONV_TYPES:
                    if _groups(a) == 1 and _groups(b) == 1:
                        found.append((a, between, b))
                    break
                if _type(b) not in CHANNELWISE_TYPES:
                    break
                between.append(b)
    return found


def _cut(mod: nn.Module, name: str, keep: torch.Tensor, dim: int) -> None:
    t = getattr(mod, name, None)
    if not isinstance(t, torch.Tensor) or t.dim() <= dim:
        return
    new = t.detach().index_select(dim, keep).clone()
    if isinstance(t, nn.Parameter):
        setattr(mod, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        setattr(mod, name, new)


def prune_channels(models: nn.Module | Iterable[nn.Module], amount: float) -> PruneResult:
    """Remove the ``amount`` fraction of output channels (smallest L1 norm) of every conv that
    feeds another conv inside a Sequential, and the matching input channels of that conv (see
    module doc). At least one channel is kept. Raises :class:`PruneError` when the model has no
    such pair (e.g. a ``torch.export`` graph)."""
    amount = _check_amount(amount, "prune_channels", below_one=True)
    models = [models] if isinstance(models, nn.Module) else list(models)
    pairs = [p for m in models for p in _pairs(m)]
    if not pairs:
        raise PruneError(
            "prune_channels: the model has no conv -> conv pair inside an nn.Sequential whose channels "
            "can be removed (an exported graph keeps no modules); use prune (unstructured) instead"
        )
    removed = 0
    if amount > 0:
        with torch.no_grad():
            for a, between, b in pairs:
                a_out = 1 if _type(a).startswith("ConvTranspose") else 0
                b_in = 0 if _type(b).startswith("ConvTranspose") else 1
                w = a.weight
                channels = w.shape[a_out]
                if b.weight.shape[b_in] != channels:
                    continue  # not the plain chain we can cut
                mask = torch_prune.LnStructured(amount, n=1, dim=a_out).compute_mask(
                    w, default_mask=torch.ones_like(w)
                )
                alive = mask.sum(dim=[d for d in range(w.dim()) if d != a_out]) > 0
                keep = torch.nonzero(alive).flatten()
                if len(keep) == 0:  # never remove every channel: keep the strongest
                    norms = w.abs().sum(dim=[d for d in range(w.dim()) if d != a_out])
                    keep = norms.argmax().reshape(1)
                if len(keep) == channels:
                    continue
                _cut(a, "weight", keep, a_out)
                _cut(a, "bias", keep, 0)
                for m in between:
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        t = getattr(m, name, None)
                        if isinstance(t, torch.Tensor) and t.dim() == 1 and t.numel() == channels:
                            _cut(m, name, keep, 0)
                    if isinstance(getattr(m, "num_features", None), int):
                        try:
                            m.num_features = len(keep)
                        except Exception:  # a TorchScript constant: its traced code does not use it
                            pass
                _cut(b, "weight", keep, b_in)
                removed += channels - len(keep)
    return PruneResult("l1-channels", amount, len(pairs), removed)


def weight_counts(models: nn.Module | Iterable[nn.Module]) -> tuple[int, int]:
    """(parameters, nonzero parameters) over ``models``."""
    models = [models] if isinstance(models, nn.Module) else list(models)
    total = nonzero = 0
    for m in models:
        for p in m.parameters():
            total += p.numel()
            nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero


def zero_weight_macs(model: nn.Module, example_inputs) -> int:
    """MACs one forward pass of ``model`` on ``example_inputs`` (a tensor or a tuple) spends on
    weight entries equal to 0 (counted, see :func:`~mlflow_wattsup.analysis.flops.counting`)."""
    from mlflow_wattsup.analysis.flops import counting

    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    with torch.no_grad(), counting(model) as c:
        model(*args)
    return c.macs_zero_weight
