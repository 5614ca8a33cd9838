"""Zoo: every model trains a few SGD steps on every built-in dataset whose shape fits (and a clear
error on those that do not), parameter counts against hand counts, skips, widths, the
Transformer's functional derivatives, the registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

import lossatlas.batteries.datasets as D
import lossatlas.batteries.zoo as Z
from lossatlas.core.errors import LossAtlasError
from test_datasets import write_fake_cifar

VECTORS = ["digits", "mnist1d", "gaussians", "spirals", "teacher"]
IMAGES = ["digits_image", "cifar10", "cifar100"]
SIGNALS = ["mnist1d_channels"]
TOKENS = ["tokens"]
ALL = VECTORS + IMAGES + SIGNALS + TOKENS

TINY = {  # small widths keep the suite fast
    "mlp": {"width": 16},
    "cnn": {"width": 4},
    "resnet20": {"width": 0.25},
    "resnet32": {"width": 0.25},
    "resnet56": {"width": 0.25},
    "resnet110": {"width": 0.25},
    "resnet18": {"width": 4},
    "vgg9": {"width": 8},
    "vgg11": {"width": 8},
    "transformer": {"width": 16, "heads": 2},
}
FITS = {
    "mlp": VECTORS + IMAGES + SIGNALS,
    "cnn": IMAGES + SIGNALS,
    **{m: IMAGES for m in ("resnet20", "resnet32", "resnet56", "resnet110", "resnet18")},
    "vgg9": IMAGES,
    "vgg11": IMAGES,
    "transformer": TOKENS,
}
FORWARD_ONLY = {"resnet56", "resnet110"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, D.ArrayDataset]:
    """The first 64 training samples of every built-in dataset (CIFAR from a tiny fake)."""
    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(root, "cifar10")
    write_fake_cifar(root, "cifar100")
    loads = {
        "digits": ("digits", {}), "digits_image": ("digits", {"image": True}),
        "mnist1d": ("mnist1d", {}), "mnist1d_channels": ("mnist1d", {"channels": True}),
        "gaussians": ("gaussians", {}), "spirals": ("spirals", {}), "teacher": ("teacher", {}),
        "tokens": ("tokens", {}),
        "cifar10": ("cifar10", {"root": root}), "cifar100": ("cifar100", {"root": root}),
    }
    out = {}
    for key, (name, kw) in loads.items():
        train, _ = D.load(name, **kw)
        out[key] = D.take(train, 64, seed=0)
    return out


def test_registry_lists_every_model():
    assert set(FITS) == set(Z.names())


def _sgd_losses(model: nn.Module, X: torch.Tensor, y: torch.Tensor, steps: int = 3) -> list:
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(steps + 1):
        loss = nn.functional.cross_entropy(model(X), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses


@pytest.mark.parametrize("model_name", sorted(FITS))
def test_every_model_trains_on_every_dataset_that_fits(model_name, data):
    for key in ALL:
        ds = data[key]
        if key not in FITS[model_name]:
            with pytest.raises(LossAtlasError, match=r"input_shape=|vocab_size|token"):
                Z.build(model_name, dataset=ds, **TINY[model_name])
            continue
        model = Z.build(model_name, dataset=ds, seed=0, **TINY[model_name])
        X, y = ds.tensors
        if model_name in FORWARD_ONLY:
            out = model(X[:2])
            assert out.shape == (2, ds.num_classes) and torch.isfinite(out).all()
            continue
        losses = _sgd_losses(model, X, y)
        assert all(math.isfinite(v) for v in losses), (model_name, key, losses)
        assert losses[-1] < losses[0], (model_name, key, losses)
        model.eval()
        with torch.no_grad():
            assert model(X).shape == (len(ds), ds.num_classes)


def _cifar_resnet_count(n: int, C: int = 10, projection: bool = False) -> int:
    """Hand count: conv weights (3·3·c_in·c_out, no bias) and BN (2·c) per layer, fc 64·C + C."""
    def conv_bn(c_in, c_out, k=3):
        return k * k * c_in * c_out + 2 * c_out

    total = conv_bn(3, 16)
    for c_in, c in ((16, 16), (16, 32), (32, 64)):
        total += conv_bn(c_in, c) + conv_bn(c, c) + (n - 1) * 2 * conv_bn(c, c)
        if projection and c_in != c:
            total += conv_bn(c_in, c, k=1)
    return total + 64 * C + C


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_hand_counts_and_papers():
    r20 = _count(Z.build("resnet20", option="A"))
    assert r20 == _cifar_resnet_count(3) == 269_722  # He et al.: 0.27M
    assert _count(Z.build("resnet20")) == _cifar_resnet_count(3, projection=True)
    assert _count(Z.build("resnet32", option="A")) == _cifar_resnet_count(5)  # 0.46M
    assert _count(Z.build("resnet56", option="A")) == _cifar_resnet_count(9)  # 0.85M
    assert _count(Z.build("resnet110", option="A", num_classes=100)) == _cifar_resnet_count(
        18, C=100
    )
    assert _count(Z.build("resnet18")) == 11_173_962  # the usual CIFAR ResNet-18
    # Li et al.'s VGG-9: 7 convs, Linear(256·4·4, 256) + BN, Linear(256, 10)
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
    vgg9 = sum(9 * a * b + 2 * b for a, b in convs) + 4096 * 256 + 256 + 2 * 256 + 2570
    assert _count(Z.build("vgg9", batchnorm=True)) == vgg9


def test_width_scales_parameter_count():
    assert _count(Z.build("mlp", in_features=64, num_classes=10, width=7)) == 64 * 7 + 7 + 70 + 10
    base = _count(Z.build("resnet20", width=1))
    assert 3.9 < _count(Z.build("resnet20", width=2)) / base < 4.1
    assert 0.2 < _count(Z.build("resnet20", width=0.5)) / base < 0.3
    r18 = Z.build("resnet18", width=8)
    assert r18.conv1.out_channels == 8 and r18.layer4[0].conv2.out_channels == 64
    vgg = [m for m in Z.build("vgg11", width=16).modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in vgg] == [16, 32, 64, 64, 128, 128, 128, 128]


def test_shortcut_false_removes_the_skip_connections():
    torch.manual_seed(0)
    with_skip, no_skip = Z.build("resnet20"), Z.build("resnet20", shortcut=False)
    blocks = [m for m in no_skip.modules() if isinstance(m, Z.BasicBlock)]
    assert len(blocks) == 9 and all(b.shortcut is None for b in blocks)
    assert _count(no_skip) == _cifar_resnet_count(3)  # no projection parameters either
    # a block whose residual branch outputs zero passes relu(x) with the skip, zero without
    x = torch.randn(2, 16, 8, 8)
    for net, expected in ((with_skip, torch.relu(x)), (no_skip, torch.zeros_like(x))):
        block = net.layer1[0].eval()
        nn.init.zeros_(block.bn2.weight)
        nn.init.zeros_(block.bn2.bias)
        with torch.no_grad():
            assert torch.allclose(block(x), expected)
    # option A pads with zeros: no parameters, and the new channels of the shortcut are zero
    a_block = Z.build("resnet20", option="A").layer2[0]
    assert sum(p.numel() for p in a_block.shortcut.parameters()) == 0
    out = a_block.shortcut(x)
    assert out.shape == (2, 32, 4, 4) and torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert not out[:, 16:].any()


def test_cnn_picks_conv1d_for_signals_and_conv2d_for_images():
    c1 = Z.build("cnn", input_shape=(1, 40), num_classes=10, width=4)
    c2 = Z.build("cnn", input_shape=(1, 8, 8), num_classes=10, width=4)
    assert any(isinstance(m, nn.Conv1d) for m in c1.modules())
    assert any(isinstance(m, nn.Conv2d) for m in c2.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in c2.modules())


def test_transformer_deterministic_in_train_mode_and_torch_func_ready(data):
    ds = data["tokens"]
    model = Z.build("transformer", dataset=ds, seed=0, **TINY["transformer"]).train()
    X, y = ds.tensors
    assert torch.equal(model(X), model(X))  # dropout 0 by default
    model.double()  # float64 for the finite-difference check
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p):
        return nn.functional.cross_entropy(functional_call(model, p, (X,)), y)

    # forward-over-reverse Hessian-vector product (torch.func) against reverse-over-reverse
    # (double backward with torch.autograd) and against central differences of the gradient
    gen = torch.Generator().manual_seed(1)
    v = {k: torch.randn(t.shape, dtype=t.dtype, generator=gen) for k, t in params.items()}
    _, hv = jvp(grad(loss), (params,), (v,))
    leaves = {k: t.clone().requires_grad_() for k, t in params.items()}
    g = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=True)
    rr = torch.autograd.grad(g, list(leaves.values()), grad_outputs=list(v.values()))
    eps = 1e-5
    gp = grad(loss)({k: t + eps * v[k] for k, t in params.items()})
    gm = grad(loss)({k: t - eps * v[k] for k, t in params.items()})
    exact = torch.cat([hv[k].flatten() for k in params])
    fd = torch.cat([((gp[k] - gm[k]) / (2 * eps)).flatten() for k in params])
    assert torch.allclose(exact, torch.cat([t.flatten() for t in rr]), atol=1e-10)
    assert torch.linalg.vector_norm(fd - exact) < 1e-6 * torch.linalg.vector_norm(exact)
    stacked = {k: torch.stack([t, t]) for k, t in params.items()}
    assert torch.allclose(vmap(loss)(stacked), loss(params).expand(2))
    with pytest.raises(LossAtlasError, match="int64 token ids"):
        model(X.float())


def test_seed_makes_init_reproducible_without_touching_global_rng():
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    a = Z.build("mlp", in_features=4, num_classes=3, seed=1)
    b = Z.build("mlp", in_features=4, num_classes=3, seed=1)
    assert torch.equal(torch.rand(1), expected)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize(
    ("name", "kw", "pattern"),
    [
        ("alexnet", {}, r"name='alexnet' is not a known model; use one of .*resnet20"),
        ("mlp", {}, r"model 'mlp' needs input_shape=, in_features= or dataset="),
        ("cnn", {"in_features": 64}, r"input_shape=\(64,\) does not fit model 'cnn'.*image=True"),
        ("resnet20", {"input_shape": (1, 40)}, r"input_shape=\(1, 40\) does not fit"),
        ("transformer", {"input_shape": (1, 8, 8)}, r"vocab_size is required"),
        ("transformer", {"vocab_size": 5}, r"seq_len is required"),
        ("transformer", {"vocab_size": 5, "seq_len": 4, "width": 10, "heads": 4}, r"width=10"),
        ("mlp", {"in_features": 4, "widht": 3}, r"'mlp' does not take the option widht"),
        ("mlp", {"in_features": 4, "activation": "swish"}, r"activation='swish'"),
        ("mlp", {"in_features": 4, "input_shape": (5,)}, r"input shape is given twice"),
        ("resnet20", {"option": "C"}, r"option='C'"),
        ("resnet20", {"width": 0}, r"width=0"),
        ("resnet20", {"num_classes": 0}, r"num_classes=0"),
        ("no_such_module_xyz:net", {}, r"name='no_such_module_xyz:net'"),
    ],
)
def test_clear_errors_name_the_argument(name, kw, pattern):
    with pytest.raises(LossAtlasError, match=pattern):
        Z.build(name, **kw)


def test_dataset_conflicts_and_float_data_for_transformer(data):
    with pytest.raises(LossAtlasError, match=r"class count is given twice"):
        Z.build("mlp", dataset=data["digits"], num_classes=3)
    with pytest.raises(LossAtlasError, match=r"vocab_size is required"):
        Z.build("transformer", dataset=data["digits_image"])
    with pytest.raises(LossAtlasError, match=r"name='transformer'"):
        Z.build("mlp", dataset=data["tokens"])


def test_register_and_import_strings(data):
    seen = {}

    def linear(input_shape, num_classes, bias=True):
        seen.update(input_shape=input_shape, num_classes=num_classes)
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes, bias))

    Z.register("toy_linear", linear)
    try:
        model = Z.build("toy_linear", dataset=data["digits_image"], bias=False)
        assert seen == {"input_shape": (1, 8, 8), "num_classes": 10} and model[1].bias is None
        with pytest.raises(LossAtlasError, match="already a registered model"):
            Z.register("toy_linear", linear)
    finally:
        Z._REGISTRY.pop("toy_linear")
    lin = Z.build("torch.nn:Linear", in_features=4, out_features=2)
    assert isinstance(lin, nn.Linear) and lin.in_features == 4
