import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from mlflow_wattsup.analysis.flops import ModelCostError, model_cost  # noqa: E402
from mlflow_wattsup.analysis.models.fastsurfer_cnn import FastSurferCNN  # noqa: E402


def conv_macs(h, w, cin, cout, k, bias=True):
    """Analytic MACs of a stride-1 'same' 2D convolution (+1 per output for the bias)."""
    return h * w * cout * (cin * k * k + (1 if bias else 0))


def fastsurfer_truth(size=256, cin=7, f=64, k=5, classes=79, levels=4):
    total = 0
    res = [size // 2**i for i in range(levels)]
    for i, r in enumerate(res):  # encoders
        total += (
            conv_macs(r, r, cin if i == 0 else f, f, k) + conv_macs(r, r, f, f, k) + conv_macs(r, r, f, f, 1)
        )
    b = size // 2**levels  # bottleneck
    total += conv_macs(b, b, f, f, k) * 2 + conv_macs(b, b, f, f, 1)
    for r in reversed(res):  # decoders
        total += conv_macs(r, r, f, f, k) * 2 + conv_macs(r, r, f, f, 1)
    return total + conv_macs(size, size, f, classes, 1)


def test_fastsurfer_cnn_params_and_macs():
    model = FastSurferCNN()
    cost = model_cost(model, (1, 7, 256, 256))
    assert cost.params == 1_799_206
    truth = fastsurfer_truth()
    assert truth == pytest.approx(30.8e9, rel=0.01)
    assert cost.macs == pytest.approx(truth, rel=0.01)
    assert cost.flops == 2 * cost.macs
    assert cost.backend == "ptflops-aten"
    # the module-hook counter sees MaxUnpool2d as free but adds norms/activations: close, not equal
    assert cost.checks["ptflops-pytorch"] == pytest.approx(truth, rel=0.02)
    assert cost.checks["torch-flop-counter"] == pytest.approx(truth, rel=0.01)  # no bias


class UNet(nn.Module):
    """mateuszbuda/brain-segmentation-pytorch's U-Net: 3 in, 1 out, 32 features."""

    def __init__(self, cin=3, cout=1, f=32):
        super().__init__()

        def block(a, b):
            return nn.Sequential(
                nn.Conv2d(a, b, 3, padding=1, bias=False),
                nn.BatchNorm2d(b),
                nn.ReLU(inplace=True),
                nn.Conv2d(b, b, 3, padding=1, bias=False),
                nn.BatchNorm2d(b),
                nn.ReLU(inplace=True),
            )

        self.enc = nn.ModuleList([block(cin, f), block(f, 2 * f), block(2 * f, 4 * f), block(4 * f, 8 * f)])
        self.pool = nn.MaxPool2d(2, 2)
        self.bottleneck = block(8 * f, 16 * f)
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(2 ** (i + 1) * f, 2**i * f, 2, stride=2) for i in (3, 2, 1, 0)]
        )
        self.dec = nn.ModuleList([block(2 ** (i + 1) * f, 2**i * f) for i in (3, 2, 1, 0)])
        self.out = nn.Conv2d(f, cout, 1)

    def forward(self, x):
        skips = []
        for e in self.enc:
            x = e(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=False):
            x = dec(torch.cat((up(x), skip), dim=1))
        return torch.sigmoid(self.out(x))


def unet_truth(size=256, f=32):
    total = 0
    chans = [3, f, 2 * f, 4 * f, 8 * f, 16 * f]
    for i in range(5):  # 4 encoders + bottleneck: two 3x3 convs without bias
        r = size // 2**i
        total += conv_macs(r, r, chans[i], chans[i + 1], 3, False) + conv_macs(
            r, r, chans[i + 1], chans[i + 1], 3, False
        )
    for i in (3, 2, 1, 0):
        r_in = size // 2 ** (i + 1)
        cin, cout = 2 ** (i + 1) * f, 2**i * f
        total += r_in * r_in * cin * cout * 4 + (2 * r_in) ** 2 * cout  # transposed 2x2/2 conv + bias
        r = size // 2**i
        total += conv_macs(r, r, 2 * cout, cout, 3, False) + conv_macs(r, r, cout, cout, 3, False)
    return total + conv_macs(size, size, f, 1, 1)


def test_unet_params_and_macs():
    cost = model_cost(UNet(), (1, 3, 256, 256))
    assert cost.params == 7_763_041
    truth = unet_truth()
    assert truth == pytest.approx(12.07e9, rel=0.01)
    assert cost.macs == pytest.approx(truth, rel=0.01)


def test_3d_convolutions():
    net = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 4, 3, padding=1, groups=2))
    cost = model_cost(net, (2, 1, 16, 16, 16))
    n = 2 * 16**3
    truth = n * 8 * (1 * 27 + 1) + n * 4 * (4 * 27 + 1)
    assert cost.macs == pytest.approx(truth, rel=0.01)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(10, 20)
        self.b = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x, img, scale=1.0):
        return self.a(x).sum() + self.b(img).sum() * scale


def test_several_inputs_by_shape_and_by_example():
    truth = 5 * (10 * 20 + 20) + 8 * 8 * 4 * (3 * 9 + 1)
    m = TwoInputs()
    assert model_cost(m, [(5, 10), (1, 3, 8, 8)]).macs == pytest.approx(truth, rel=0.01)
    by_kw = model_cost(
        m, example_inputs={"x": torch.zeros(5, 10), "img": torch.zeros(1, 3, 8, 8), "scale": 2.0}
    )
    assert by_kw.macs == pytest.approx(truth, rel=0.01)
    assert by_kw.input_shapes == ((5, 10), (1, 3, 8, 8))


def test_silent_and_restores_training_mode(capsys):
    model = FastSurferCNN(levels=2)
    model.train()
    model_cost(model, (1, 7, 32, 32))
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert model.training


def test_train_flops_estimate_and_layers_table():
    cost = model_cost(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1)), (1, 1, 4, 4))
    assert cost.train_flops_estimate(100) == 3 * cost.flops * 100
    rows = cost.layers_csv().splitlines()
    assert rows[0] == "module,type,params,macs_torch_flop_counter" and rows[1].startswith("0,Conv2d,20,")


def test_errors():
    with pytest.raises(ModelCostError, match="input_shape"):
        model_cost(nn.Linear(2, 2))
    with pytest.raises(ModelCostError, match="unknown FLOPs backend"):
        model_cost(nn.Linear(2, 2), (1, 2), backends=["thop"])
    with pytest.raises(ModelCostError, match="no FLOPs counter"):
        model_cost(nn.Linear(2, 2), (1, 3))  # wrong shape: every counter fails


def test_log_model_cost_to_sqlite(client, experiment):
    import mlflow_wattsup

    cost = mlflow_wattsup.log_model_cost(
        FastSurferCNN(levels=2), (1, 7, 64, 64), samples_seen=1000, experiment=experiment
    )
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    m = run.data.metrics
    assert m["params"] == cost.params and m["macs"] == cost.macs and m["flops"] == 2 * cost.macs
    assert m["train_flops_estimate"] == 3 * cost.flops * 1000
    assert "macs_check/ptflops-pytorch" in m and run.data.tags["wattsup.flops_backend"] == "ptflops-aten"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "wattsup")] == ["wattsup/model_layers.csv"]
    assert run.info.status == "FINISHED"
