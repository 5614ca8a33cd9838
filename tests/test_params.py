"""The parameter space: arithmetic, norms, selection, Gram-Schmidt, flattening, hashing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lossatlas as la
from lossatlas.core.params import Point


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 3))


def test_select_patterns_and_1d_split():
    net = _net()
    assert la.params.select(net) == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight",
                                     "3.bias"]
    assert la.params.select(net, skip_1d=True) == ["0.weight", "3.weight"]
    assert la.params.select(net, include="3.*") == ["3.weight", "3.bias"]
    assert la.params.select(net, exclude=["*.bias", "1.*"]) == ["0.weight", "3.weight"]
    net[0].weight.requires_grad_(False)
    assert "0.weight" not in la.params.select(net)
    assert "0.weight" in la.params.select(net, trainable_only=False)
    with pytest.raises(la.LossAtlasError, match="include"):
        la.params.select(net, include="nothing.*")


def test_point_is_a_detached_copy():
    net = _net()
    theta = la.params.of(net)
    theta["3.weight"].add_(1.0)
    assert not torch.equal(theta["3.weight"], net[3].weight)
    assert not theta["3.weight"].requires_grad


def test_arithmetic_dot_norm():
    a = Point(x=torch.tensor([1.0, 2.0]), y=torch.tensor([[3.0]]))
    b = Point(x=torch.tensor([0.5, -1.0]), y=torch.tensor([[2.0]]))
    assert float(la.params.dot(a, b)) == pytest.approx(0.5 - 2 + 6)
    assert float(a.norm()) == pytest.approx(14 ** 0.5)
    assert (2 * a - a)["x"].tolist() == [1.0, 2.0]
    assert (a / 2 + b)["y"].item() == pytest.approx(3.5)
    assert (-a)["x"].tolist() == [-1.0, -2.0]
    assert la.params.cosine(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="different parameters"):
        a + Point(x=torch.ones(2))


def test_axpy_is_direct_not_accumulated():
    c = Point(w=torch.tensor([1.0, 1.0]))
    d1 = Point(w=torch.tensor([1.0, 0.0]))
    d2 = Point(w=torch.tensor([0.0, 1.0]))
    p = la.params.axpy(c, [0.1, -0.3], [d1, d2])
    assert p["w"].tolist() == pytest.approx([1.1, 0.7])
    assert c["w"].tolist() == [1.0, 1.0]  # center untouched


def test_filter_and_layer_norms():
    w = torch.arange(12.0).reshape(3, 4)
    p = Point(w=w, b=torch.tensor([3.0, 4.0]))
    fn = la.params.filter_norms(p)
    assert torch.allclose(fn["w"], w.norm(dim=1))
    assert fn["b"].tolist() == [5.0]
    assert la.params.layer_norms(p)["b"].item() == 5.0


def test_gram_schmidt_orthogonal_and_norm_preserving():
    torch.manual_seed(0)
    vs = [Point(w=torch.randn(5, 3)) for _ in range(3)]
    out = la.params.gram_schmidt(vs)
    for i in range(3):
        assert float(out[i].norm()) == pytest.approx(float(vs[i].norm()), rel=1e-6)
        for j in range(i):
            assert abs(la.params.cosine(out[i], out[j])) < 1e-6
    unit = la.params.gram_schmidt(vs, normalize=True)
    assert float(unit[2].norm()) == pytest.approx(1.0, rel=1e-6)


def test_flatten_roundtrip_and_hash():
    net = _net()
    theta = la.params.of(net)
    vec = la.params.flatten(theta)
    assert vec.numel() == sum(p.numel() for p in net.parameters())
    back = la.params.unflatten(vec, theta)
    assert all(torch.equal(back[k], theta[k]) for k in theta)
    h = la.params.hash_point(theta)
    assert h == la.params.hash_point(dict(reversed(list(theta.items()))))
    theta["0.bias"][0] += 1e-3
    assert la.params.hash_point(theta) != h
