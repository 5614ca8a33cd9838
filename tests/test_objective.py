"""The Objective against hand computations, the model's own buffers and manual BN passes."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

import lossatlas as la
from lossatlas.core.errors import LossAtlasError


def _bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(8, 3))
    net.train()
    with torch.no_grad():
        net(torch.randn(64, 5))  # non-trivial running statistics
    return net


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(103, 5, generator=g), torch.randint(0, 3, (103,), generator=g)


def test_loss_is_exact_full_mean_when_batch_size_does_not_divide(data):
    X, y = data
    net = _bn_net()
    net.eval()
    expected = F.cross_entropy(net(X), y).item()
    acc = (net(X).argmax(1) == y).float().mean().item()
    for bs in (None, 10, 17, 102, 500):
        res = la.Objective(net, (X, y), batch_size=bs).evaluate()
        assert res["loss"] == pytest.approx(expected, rel=1e-6)
        assert res["accuracy"] == pytest.approx(acc, abs=1e-6)


def test_loss_at_other_point_matches_loaded_model(data):
    X, y = data
    net = _bn_net()
    obj = la.Objective(net, (X, y), batch_size=16)
    d = la.params.Point({k: torch.randn_like(v) for k, v in obj.center.items()})
    point = obj.center + 0.3 * d
    other = copy.deepcopy(net).eval()
    with torch.no_grad():
        for k, p in other.named_parameters():
            p.copy_(point[k])
        expected = F.cross_entropy(other(X), y).item()
    assert obj.loss(point) == pytest.approx(expected, rel=1e-6)
    assert obj.loss_batch([point, obj.center]).tolist() == pytest.approx(
        [expected, obj.loss()], rel=1e-6
    )


def test_evaluate_leaves_model_bit_identical(data):
    X, y = data
    net = _bn_net()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [m.training for m in net.modules()]
    momentum = net[1].momentum
    for bn in ("keep", "recalibrate"):
        obj = la.Objective(net, (X, y), batch_size=7, bn=bn)
        point = obj.center * 1.1
        obj.evaluate(point)
        obj.grad(point)
        obj.hvp(point)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [m.training for m in net.modules()] == flags
    assert net[1].momentum == momentum


def test_recalibrate_matches_manual_cumulative_pass(data):
    X, y = data
    net = _bn_net()
    obj = la.Objective(net, (X, y), batch_size=10, bn="recalibrate")
    point = obj.center * 0.8
    got = obj.recalibrate(point)

    manual = copy.deepcopy(net)
    with torch.no_grad():
        for k, p in manual.named_parameters():
            p.copy_(point[k])
    bn = manual[1]
    bn.reset_running_stats()
    bn.momentum = None
    manual.train()
    with torch.no_grad():
        for i in range(0, len(X), 10):
            manual(X[i:i + 10])
    assert torch.allclose(got["1.running_mean"], bn.running_mean, atol=1e-7)
    assert torch.allclose(got["1.running_var"], bn.running_var, atol=1e-7)
    assert int(got["1.num_batches_tracked"]) == int(bn.num_batches_tracked)
    manual.eval()
    assert obj.loss(point) == pytest.approx(F.cross_entropy(manual(X), y).item(), rel=1e-6)


def test_grad_and_hvp_match_torch_func(data):
    X, y = data
    net = _bn_net().eval()
    obj = la.Objective(net, (X, y), batch_size=17)
    flat = la.params.flatten(obj.center)

    def f(vec):
        point = la.params.unflatten(vec, obj.center)
        return F.cross_entropy(functional_call(net, {**point, **obj.buffers}, (X,)), y)

    g = torch.func.grad(f)(flat)
    H = hessian(f)(flat)
    assert torch.allclose(la.params.flatten(obj.grad()), g, atol=1e-6)
    vs = [la.params.unflatten(torch.randn(flat.numel()), obj.center) for _ in range(3)]
    for v, hv in zip(vs, obj.hvp(vs)):
        assert torch.allclose(la.params.flatten(hv), H @ la.params.flatten(v), atol=1e-5)


def test_parameter_subset_and_fixed_rest(data):
    X, y = data
    net = _bn_net().eval()
    obj = la.Objective(net, (X, y), include="4.*")
    assert obj.names == ["4.weight", "4.bias"]
    point = {k: v + 1 for k, v in obj.center.items()}
    with torch.no_grad():
        other = copy.deepcopy(net)
        other[4].weight += 1
        other[4].bias += 1
        assert obj.loss(point) == pytest.approx(F.cross_entropy(other(X), y).item(), rel=1e-6)


class _HFStyle(nn.Module):
    """A Hugging Face-like model: keyword inputs, output with .logits and optional .loss."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.emb(input_ids)
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1)
        logits = self.head(h.mean(1))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(logits=logits, loss=loss)


def test_dict_batches_and_model_loss():
    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(0, 11, (30, 7)),
             "attention_mask": torch.ones(30, 7), "labels": torch.randint(0, 4, (30,))}
    model = _HFStyle()
    with torch.no_grad():
        expected = model(**batch).loss.item()
    a = la.Objective(model, batch, batch_size=8)            # cross entropy on .logits
    b = la.Objective(model, batch, batch_size=8, loss="model")  # the model's own .loss
    assert a.loss() == pytest.approx(expected, rel=1e-6)
    assert b.loss() == pytest.approx(expected, rel=1e-6)
    # a Dataset of dict items works too
    items = [{k: v[i] for k, v in batch.items()} for i in range(30)]
    c = la.Objective(model, items, batch_size=9)
    assert c.loss() == pytest.approx(expected, rel=1e-6)


def test_custom_loss_and_dataloader(data):
    X, _ = data
    net = _bn_net().eval()
    target = torch.randn(103, 3)

    def half_mse(out, t):
        return 0.5 * ((out - t) ** 2).sum(1).mean()

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, target), batch_size=13, shuffle=True
    )
    obj = la.Objective(net, loader, loss=half_mse, batch_size=20)
    with torch.no_grad():
        expected = half_mse(net(X), target).item()
    # the loader shuffles, but a full-data mean does not depend on the order
    assert obj.loss() == pytest.approx(expected, rel=1e-5)
    assert obj.evaluate()["accuracy"] != obj.evaluate()["accuracy"]  # nan: not a classifier


class _Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3)

    def forward(self, x):
        return F.dropout(self.lin(x), 0.5, training=True)  # dropout forced on


class _Augmented(torch.utils.data.Dataset):
    def __init__(self, X, y):
        self.X, self.y = X, y

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return self.X[i] + 0.1 * torch.randn_like(self.X[i]), self.y[i]


def test_determinism_check_catches_traps(data):
    X, y = data
    with pytest.raises(LossAtlasError, match="different losses"):
        la.Objective(_Noisy(), (X, y))
    with pytest.raises(LossAtlasError, match="augmentation"):
        la.Objective(nn.Linear(5, 3), _Augmented(X, y))


def test_bad_input_is_one_clear_sentence(data):
    X, y = data
    net = nn.Linear(5, 3)
    with pytest.raises(LossAtlasError, match="bn="):
        la.Objective(net, (X, y), bn="update")
    with pytest.raises(LossAtlasError, match="loss="):
        la.Objective(net, (X, y), loss="hinge")
    with pytest.raises(LossAtlasError, match="batch_size"):
        la.Objective(net, (X, y), batch_size=0)
    with pytest.raises(LossAtlasError, match="model"):
        la.Objective("net", (X, y))
    obj = la.Objective(net, (X, y))
    with pytest.raises(LossAtlasError, match=r"obj\.names"):
        obj.loss({"weight": net.weight})


class _Uncopyable(nn.Sequential):
    """A model deepcopy refuses: the Objective then runs it functionally."""

    def __deepcopy__(self, memo):
        raise RuntimeError("this model cannot be copied")


def _manual_recalibrated_loss(net: nn.Module, point, X, y, batch_size: int) -> float:
    """The papers' UpBN by hand: the point's weights, BN statistics reset, a train-mode pass
    with a cumulative average over the batches, then the eval-mode loss."""
    manual = copy.deepcopy(net)
    with torch.no_grad():
        for k, p in manual.named_parameters():
            p.copy_(point[k])
        for m in manual.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.reset_running_stats()
                m.momentum = None
        manual.train()
        for i in range(0, len(X), batch_size):
            manual(X[i:i + batch_size])
        manual.eval()
        return F.cross_entropy(manual(X), y).item()


def test_one_recalibration_serves_objective_engine_and_functional_path(data):
    """Objective.recalibrate_bn is the only BN pass: on the Objective's private copy, in the
    landscape engine (each pass stopped after the last BN) and functionally for a model that
    cannot be copied, the loss at a point equals a hand-written train-mode pass."""
    import numpy as np

    from lossatlas.measurements.landscape import engine

    X, y = data
    net = _bn_net()
    d = la.params.Point({k: torch.randn_like(v) * 0.3 for k, v in la.params.of(net).items()})
    point = la.params.axpy(la.params.of(net), [0.7], [d])
    expected = _manual_recalibrated_loss(net, point, X, y, 10)
    obj = la.Objective(net, (X, y), batch_size=10, bn="recalibrate")
    assert obj.loss(point) == pytest.approx(expected, rel=1e-6)  # private copy
    eng = engine.Engine.build(obj, obj.center, [d], fast=False)
    assert eng.mode == "inplace" and eng._last_bn is not None  # the tail-stopped pass
    loss, _ = eng.evaluate(np.array([[0.7]]))
    assert loss[0] == pytest.approx(expected, rel=1e-6)

    stiff = _Uncopyable(*copy.deepcopy(list(net)))
    fobj = la.Objective(stiff, (X, y), batch_size=10, bn="recalibrate")
    assert fobj.private_model() is None
    assert fobj.loss(point) == pytest.approx(expected, rel=1e-6)  # functional
    assert engine.Engine.build(fobj, fobj.center, [d]).mode == "functional"
    bufs = fobj.recalibrate(point)
    ref = obj.recalibrate(point)
    for k in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        assert torch.allclose(bufs[k].double(), ref[k].double(), atol=1e-6), k
    assert torch.equal(stiff[1].running_mean, net[1].running_mean)  # the user's model untouched


def test_hvp_is_the_operators_product_and_the_dense_hessian(data):
    """Objective.hvp delegates to the Hessian operator: the same product as
    HessianOperator.matmat, and H v with H the dense Hessian (torch.func) of a tiny net, at a
    point off the center and with a batch size that does not divide N."""
    from lossatlas.measurements.hessian.operator import HessianOperator

    X, y = data
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    obj = la.Objective(net, (X, y), batch_size=17)
    point = obj.center * 1.3
    flat = la.params.flatten(point)

    def f(vec):
        p = la.params.unflatten(vec, obj.center)
        return F.cross_entropy(functional_call(net, dict(p), (X,)), y)

    H = hessian(f)(flat)
    vs = [la.params.unflatten(torch.randn(flat.numel()), obj.center) for _ in range(3)]
    got = obj.hvp(vs, point)
    op = HessianOperator(obj, point)
    V = torch.stack([la.params.flatten(v) for v in vs], dim=1)
    HV = op.matmat(V)
    for i, (v, hv) in enumerate(zip(vs, got)):
        assert torch.allclose(la.params.flatten(hv), H @ la.params.flatten(v), atol=1e-5)
        assert torch.allclose(la.params.flatten(hv), HV[:, i], atol=1e-6)
    one = obj.hvp(vs[0], point)  # a single vector gives a single Point
    assert isinstance(one, la.params.Point)
    assert torch.allclose(la.params.flatten(one), HV[:, 0], atol=1e-6)


def test_several_points_per_data_pass_equal_the_loop_with_and_without_bn():
    """DESIGN's batched loss: points vmapped over their stacked parameters, one pass over the
    data for ``per_pass`` points, equal the point-by-point evaluation (BN statistics kept)."""
    torch.manual_seed(0)
    X, y = torch.randn(90, 6), torch.randint(0, 3, (90,))
    for model in (torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                                      torch.nn.Linear(8, 3)),
                  torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8),
                                      torch.nn.ReLU(), torch.nn.Linear(8, 3))):
        model.train()(X)  # BN running statistics that differ from the defaults
        obj = la.Objective(model, (X, y), batch_size=32)
        center = la.params.of(model)
        points = [la.params.Point({k: v + 0.1 * s * torch.randn_like(v)
                                   for k, v in center.items()}) for s in range(5)]
        loop = obj.evaluate_batch(points)
        for per_pass in (2, 5, 8):
            batched = obj.evaluate_batch(points, per_pass=per_pass)
            np.testing.assert_allclose(batched["loss"], loop["loss"], rtol=1e-5)
            np.testing.assert_array_equal(batched["accuracy"], loop["accuracy"])
        np.testing.assert_allclose(obj.loss_batch(points, per_pass=3),
                                   [obj.loss(p) for p in points], rtol=1e-5)
    with pytest.raises(la.LossAtlasError, match="per_pass"):
        obj.evaluate_batch(points, per_pass=0)
