"""Pruning (L1 unstructured, channel removal) and the MACs of nonzero weights, against counts made
by hand."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from mlflow_wattsup.analysis.flops import counting  # noqa: E402
from mlflow_wattsup.analysis.pruning import (  # noqa: E402
    PruneError,
    conv_weights,
    prune_channels,
    prune_unstructured,
    weight_counts,
    zero_weight_macs,
)


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),  # 10x10 -> 8x8
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3),  # -> 6x6
        nn.Flatten(),
        nn.Linear(6 * 6 * 6, 5),
    ).eval()


def randomise_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)


def by_hand(model, batch=2):
    """(dense MACs, MACs of nonzero weights) of `net()` on 10x10 inputs: every conv weight entry is
    used once per output position (and batch item), every linear weight entry once per item."""
    c1, c2, lin = model[0].weight, model[3].weight, model[5].weight
    dense = batch * (64 * c1.numel() + 36 * c2.numel() + lin.numel())
    nonzero = batch * (
        64 * int(torch.count_nonzero(c1)) + 36 * int(torch.count_nonzero(c2)) + int(torch.count_nonzero(lin))
    )
    return dense, nonzero


def test_unstructured_zeroes_the_smallest_fraction_of_every_conv_only():
    m = net()
    lin_before = m[5].weight.detach().clone()
    originals = [w.detach().clone() for _, w in conv_weights(m)]
    r = prune_unstructured(m, 0.5)
    assert r.tensors == 2 and r.removed == round(0.5 * 216) + round(0.5 * 432)
    for (_, w), w0 in zip(conv_weights(m), originals, strict=True):
        zero = w == 0
        assert int(zero.sum()) == round(0.5 * w.numel())
        assert w0[zero].abs().max() <= w0[~zero].abs().min()  # the smallest magnitudes went
        assert torch.equal(w[~zero], w0[~zero])  # the rest untouched
    assert torch.equal(m[5].weight, lin_before)  # not a conv
    assert not any(hasattr(mod, "weight_orig") for mod in m.modules())  # made permanent
    assert prune_unstructured(m, 0).removed == 0
    with pytest.raises(PruneError, match="prune=1.5 must be a fraction"):
        prune_unstructured(m, 1.5)


def test_macs_nonzero_counts_only_nonzero_weights():
    m = net()
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad(), counting(m) as c:
        m(x)
    assert (c.macs, c.macs_nonzero) == by_hand(m)
    assert c.macs_nonzero == c.macs
    prune_unstructured(m, 0.75)
    with torch.no_grad(), counting(m) as c:
        m(x)
    dense, nonzero = by_hand(m)
    assert c.macs == dense and c.macs_nonzero == nonzero < dense
    assert zero_weight_macs(m, x) == dense - nonzero
    with torch.no_grad(), counting() as c:  # weights not named: nothing counted as zero
        m(x)
    assert c.macs_nonzero == c.macs == dense
    total, nz = weight_counts(m)
    assert total == sum(p.numel() for p in m.parameters())
    assert nz == sum(int(torch.count_nonzero(p)) for p in m.parameters()) < total


def test_channel_pruning_removes_channels_and_equals_zeroing_them():
    m = net()
    with torch.no_grad():
        randomise_bn(m)
    x = torch.randn(2, 3, 10, 10)
    norms = m[0].weight.detach().abs().sum(dim=(1, 2, 3))
    dropped = set(torch.argsort(norms)[:4].tolist())  # the 4 weakest of 8 output channels
    reference = net()
    reference.load_state_dict(m.state_dict())
    with torch.no_grad():
        for c in dropped:  # what removing channel c means: conv B never sees it
            reference[3].weight[:, c] = 0
        expected = reference(x)
    with torch.no_grad(), counting(m) as before:
        m(x)
    r = prune_channels(m, 0.5)
    assert (r.tensors, r.removed) == (1, 4)
    assert m[0].weight.shape == (4, 3, 3, 3) and m[0].bias.shape == (4,)
    assert m[1].running_mean.shape == (4,) and m[1].weight.shape == (4,)
    assert m[3].weight.shape == (6, 4, 3, 3)
    with torch.no_grad(), counting(m) as after:
        y = m(x)
    assert torch.allclose(y, expected, atol=1e-5)
    assert after.macs == by_hand(m)[0] < before.macs  # the dense kernels got cheaper
    with pytest.raises(PruneError, match="below 1"):
        prune_channels(m, 1.0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_channel_pruning_traced_and_grouped():
    seq = nn.Sequential(
        nn.Conv3d(1, 8, 3, padding=1), nn.InstanceNorm3d(8), nn.ReLU(), nn.Conv3d(8, 2, 1)
    ).eval()
    x = torch.randn(1, 1, 6, 6, 6)
    traced = torch.jit.trace(seq, x)  # deepbet's networks are traced TorchScript
    r = prune_channels(traced, 0.25)
    assert r.removed == 2 and dict(traced.named_parameters())["0.weight"].shape[0] == 6
    assert traced(x).shape == (1, 2, 6, 6, 6)
    grouped = torch.jit.trace(
        nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.ReLU(), nn.Conv2d(8, 2, 1)), torch.randn(1, 4, 5, 5)
    )
    with pytest.raises(PruneError, match="no conv -> conv pair"):
        prune_channels(grouped, 0.5)  # channels of a grouped conv cannot be cut alone


def test_exported_graph_prunes_by_weight_shape_but_has_no_channel_pairs():
    m = net()
    x = torch.randn(2, 3, 10, 10)
    exported = torch.export.export(m, (x,)).module()
    assert [tuple(w.shape) for _, w in conv_weights(exported)] == [(8, 3, 3, 3), (6, 8, 3, 3)]
    prune_unstructured(exported, 0.5)
    with torch.no_grad(), counting(exported) as c:
        exported(x)
    assert c.macs_nonzero == c.macs - (64 * 108 + 36 * 216) * 2
    with pytest.raises(PruneError, match="use prune"):
        prune_channels(exported, 0.5)
