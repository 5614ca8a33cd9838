"""la.connect.align: the aligned model computes model B's function, weight matching climbs
⟨θ_a, π(θ_b)⟩ to a fixed point, an exactly permuted copy is recovered exactly (barrier 0), the
barrier between trained MLPs drops, and connect / the CLI / the sweep report before and after."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lossatlas as la
from lossatlas.core.errors import LossAtlasError
from lossatlas.measurements import align as A


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _randomize_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BN running statistics, so that a wrong permutation of them would show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            m.weight.data.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
    return model.eval()


CASES = [  # name, options, input shape: an MLP, 2-D and 1-D CNNs, ResNets (B), VGG-9 whose
    # classifier reads a flattened 4x4 map (block permutations)
    ("mlp", {"in_features": 20, "width": 24, "depth": 3}, (20,)),
    ("cnn", {"input_shape": (1, 8, 8), "width": 4}, (1, 8, 8)),
    ("cnn", {"input_shape": (2, 40), "width": 4}, (2, 40)),
    ("resnet20", {"input_shape": (3, 8, 8), "width": 0.5}, (3, 8, 8)),
    ("resnet18", {"input_shape": (3, 8, 8), "width": 4}, (3, 8, 8)),
    ("vgg9", {"input_shape": (1, 32, 32), "width": 8}, (1, 32, 32)),
]


@pytest.mark.parametrize("name,kw,shape", CASES, ids=[f"{c[0]}{c[2]}" for c in CASES])
@pytest.mark.parametrize("method", ["weights", "activations"])
def test_aligned_model_computes_the_same_function(name, kw, shape, method):
    """Same outputs as model B to float precision (permuted sums round differently, so
    allclose, not bit-equal) on random inputs, and the Objective's loss within 1e-6."""
    a = _randomize_bn(la.zoo.build(name, seed=0, **kw), 0)
    b = _randomize_bn(la.zoo.build(name, seed=1, **kw), 1)
    x = torch.randn(16, *shape, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(3))
    found = A.match(a, b, method, data=x)
    c = found.model
    assert any(not np.array_equal(p, np.arange(len(p))) for p in found.perms.values())
    with torch.no_grad():
        want, got = b(x), c(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    obj = la.Objective(b, (x, y))
    assert abs(obj.loss(dict(c.named_parameters()), dict(c.named_buffers())) - obj.loss()) < 1e-6
    # neither input model was changed; BN running statistics moved with their units
    assert torch.equal(la.params.flatten(la.params.of(b)),
                       la.params.flatten(la.params.of(_randomize_bn(
                           la.zoo.build(name, seed=1, **kw), 1))))


def test_weight_matching_climbs_to_a_fixed_point():
    a = la.zoo.build("mlp", in_features=16, width=32, depth=3, seed=0)
    b = la.zoo.build("mlp", in_features=16, width=32, depth=3, seed=1)
    found = A.match(a, b, "weights")
    h = np.array(found.history)
    assert found.converged and len(h) >= 3
    assert np.all(np.diff(h) >= -1e-9 * abs(h).max()) and h[-1] > h[0]
    theta_a = dict(a.named_parameters())
    assert A.inner_product(theta_a, dict(found.model.named_parameters())) == pytest.approx(h[-1])
    # a fixed point: matching again from the aligned model changes nothing, and no single
    # group's linear assignment can improve it
    again = A.match(a, found.model, "weights", seed=5)
    assert all(np.array_equal(p, np.arange(len(p))) for p in again.perms.values())
    assert len(again.history) == 2 and again.history[1] == pytest.approx(h[-1])


def test_exact_permutation_is_recovered_exactly_and_the_barrier_is_zero():
    train, _ = la.datasets.load("digits")
    a = la.zoo.build("mlp", dataset=train, width=48, depth=2, seed=0)
    spec = A.permutation_spec(a)
    rng = np.random.default_rng(0)
    b = A.apply_permutation(a, {g: rng.permutation(n) for g, n in spec.sizes.items()}, spec)
    assert not torch.equal(a[1].weight, b[1].weight)
    for method in ("weights", "activations"):
        c = la.connect.align(a, b, method=method, data=train)
        for (k, p), q in zip(a.state_dict().items(), c.state_dict().values()):
            assert torch.equal(p, q), (method, k)
    obj = la.Objective(a, train, batch_size=512)
    line = la.connect.linear_barrier(obj, a, c, points=5, metric="loss")
    assert line["barrier"] == 0.0 and line["mc"] == 0.0
    assert la.connect.linear_barrier(obj, a, b, points=5, metric="loss")["barrier"] > 1e-3


def test_bn_statistics_move_with_their_units_in_a_resnet():
    a = _randomize_bn(la.zoo.build("resnet20", input_shape=(3, 8, 8), width=0.5, seed=0), 0)
    spec = A.permutation_spec(a)
    # one residual stream per stage: the stem, every block's second conv and the projection
    # shortcut of a stage share a group; each block's hidden layer is a group of its own
    stream = {g for ax, g, _ in spec.axes["conv1.weight"] if ax == 0}
    assert {g for ax, g, _ in spec.axes["layer1.2.conv2.weight"] if ax == 0} == stream
    assert {g for _, g, _ in spec.axes["bn1.running_mean"]} == stream
    assert len(spec.sizes) == 3 + 9
    perms = {g: np.random.default_rng(g).permutation(n) for g, n in spec.sizes.items()}
    c = A.apply_permutation(a, perms, spec)
    g = next(iter(stream))
    assert torch.equal(c.bn1.running_var, a.bn1.running_var[perms[g]])
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(c(x), a(x), atol=1e-5)


def test_models_without_a_derivable_structure_are_refused_in_one_sentence():
    tokens, _ = la.datasets.load("tokens")
    t = la.zoo.build("transformer", dataset=tokens)
    with pytest.raises(LossAtlasError, match="cannot derive the permutation structure of "
                                             "TokenTransformer") as e:
        la.connect.align(t, la.zoo.build("transformer", dataset=tokens))
    assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")
    pad = la.zoo.build("resnet20", input_shape=(3, 8, 8), option="A")
    with pytest.raises(LossAtlasError, match="getitem"):
        A.permutation_spec(pad)

    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)
            self.scale = torch.nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.lin(x) * self.scale

    with pytest.raises(LossAtlasError, match="used outside a module"):
        A.permutation_spec(Shared())
    a = la.zoo.build("mlp", in_features=4, width=8)
    with pytest.raises(LossAtlasError, match="model_b differs"):
        la.connect.align(a, la.zoo.build("mlp", in_features=4, width=9))
    with pytest.raises(LossAtlasError, match="method="):
        la.connect.align(a, a, method="sinkhorn")
    with pytest.raises(LossAtlasError, match="data is required"):
        la.connect.align(a, a, method="activations")


@pytest.fixture(scope="module")
def trained_pair():
    train, _ = la.datasets.load("digits")
    models = []
    for s in (0, 1):
        m = la.zoo.build("mlp", dataset=train, width=64, depth=2, seed=s)
        la.train(m, train, epochs=8, lr=0.05, batch_size=64, seed=s, progress=False,
                 record=None)
        models.append(m)
    return train, models


def test_alignment_lowers_the_barrier_between_trained_mlps(trained_pair):
    """Entezari et al. 2022: most of the barrier between two SGD solutions is permutation."""
    train, (a, b) = trained_pair
    obj = la.Objective(a, train, batch_size=512)
    before = la.connect.linear_barrier(obj, a, b, points=11, metric="loss")["barrier"]
    for method in ("weights", "activations"):
        after = la.connect.linear_barrier(
            obj, a, la.connect.align(a, b, method=method, data=train), points=11,
            metric="loss")["barrier"]
        assert after < 0.5 * before, (method, before, after)


def test_train_curve_with_align_reports_before_and_after(trained_pair, tmp_path):
    train, (a, b) = trained_pair
    obj = la.Objective(a, train, batch_size=512)
    res = la.connect.train_curve(obj, a, b, epochs=1, points=5, metric="loss", align="weights")
    plain = la.connect.train_curve(obj, a, b, epochs=1, points=5, metric="loss")
    aligned = la.connect.align(a, b)
    after = la.connect.train_curve(obj, a, aligned, epochs=1, points=5, metric="loss")
    assert res.align == "weights" and res.settings["align_converged"]
    assert res.unaligned_mc == pytest.approx(plain.mc)
    assert res.unaligned_linear_mc == pytest.approx(plain.linear_mc)
    np.testing.assert_allclose(res.unaligned_linear_loss, plain.linear_loss)
    assert res.mc == pytest.approx(after.mc) and res.linear_mc == pytest.approx(after.linear_mc)
    assert res.linear_barrier < res.unaligned_linear_barrier
    back = la.load(res.save(tmp_path / "c.h5"))
    assert back.align == "weights" and back.unaligned_linear_barrier == pytest.approx(
        res.unaligned_linear_barrier)
    d = res.as_dict()
    assert d["mc_linear_unaligned"] == pytest.approx(plain.linear_mc)


def test_cli_connect_align(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lossatlas.cli import app

    monkeypatch.setenv("LOSSATLAS_QUIET", "1")
    train, _ = la.datasets.load("digits")
    paths = []
    for s in (0, 1):
        m = la.zoo.build("mlp", dataset=train, width=16, seed=s)
        paths.append(str(tmp_path / f"m{s}.pt"))
        torch.save(m.state_dict(), paths[-1])
    out = tmp_path / "mc.h5"
    res = CliRunner().invoke(app, ["connect", *paths, "--width", "16", "--epochs", "1",
                                   "--dense", "3", "--align", "weights", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "aligned by weights: line barrier" in res.output
    assert la.load(out).align == "weights"


def test_sweep_mc_aligned_is_the_aligned_curve(tmp_path):
    from lossatlas import sweeps as S

    raw = {"name": "al", "seeds": [0, 1], "data": {"name": "digits", "train_size": 120},
           "model": {"name": "mlp", "width": 8}, "train": {"epochs": 2, "lr": 0.05},
           "load": {"param": "width", "values": [8]},
           "temperature": {"param": "batch_size", "values": [32]},
           "measure": {"hessian": False, "connect": {"epochs": 1}, "cka": False,
                       "mc_aligned": True}}
    res = S.run(raw, tmp_path / "o", progress=False)
    row = next(r for r in res.rows if r["kind"] == "pair")
    assert not row["errors"]
    cell = S.cells(S.load_spec(raw))[0]
    train, _ = la.datasets.load("digits", train_size=120)
    models = []
    for s in (0, 1):
        m = la.zoo.build("mlp", dataset=train, width=8)
        m.load_state_dict(torch.load(tmp_path / "o" / "models" / f"{cell.train_key(s)}.pt",
                                     weights_only=True))
        models.append(m)
    torch.manual_seed(30_001)
    direct = la.connect.mode_connectivity_between(
        models[0], la.connect.align(models[0], models[1], seed=1), train, points=5, seed=1,
        epochs=1)
    assert row["metrics"]["mc_aligned"] == pytest.approx(direct["mc"])
    assert row["metrics"]["mc_linear_aligned"] == pytest.approx(direct["mc_linear"])
    assert np.isfinite(res.cells[0]["mc_aligned"])
