"""Directions: filter / layer / model normalization, biases, determinism, between, save/load."""

import pytest
import torch
from torch import nn

import lossatlas as la
from lossatlas.core.errors import LossAtlasError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)
    )


def test_filter_norm_matches_each_filter_and_biases_zero():
    net = _net()
    theta = la.params.of(net)
    d = la.directions.gaussian(net, norm="filter", seed=3)
    for k, v in d.items():
        if v.dim() <= 1:
            assert torch.count_nonzero(v) == 0, k  # biases and BN zero by default
        else:
            got = v.reshape(v.shape[0], -1).norm(dim=1)
            want = theta[k].reshape(v.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    assert d.meta["kind"] == "gaussian" and d.meta["seed"] == 3 and d.meta["norm"] == "filter"
    assert d.meta["center_hash"] == la.params.hash_point(theta)


def test_biases_included_are_normalized_once():
    net = _net()
    with torch.no_grad():
        net[1].bias.fill_(0.5)
    theta = la.params.of(net)
    d = la.directions.gaussian(net, norm="filter", seed=0, ignore=None)
    for k in ("0.bias", "1.weight", "1.bias", "4.bias"):
        torch.testing.assert_close(d[k].norm(), theta[k].norm(), rtol=1e-5, atol=0)
    # the raw Gaussian draw's direction is kept: only the scale changes
    raw = la.directions.gaussian(net, norm="none", seed=0, ignore=None)
    cos = torch.nn.functional.cosine_similarity(raw["1.bias"], d["1.bias"], dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-6)


def test_layer_and_model_norms():
    net = _net()
    theta = la.params.of(net)
    d = la.directions.gaussian(net, norm="layer", seed=1)
    for k, v in d.items():
        if v.dim() > 1:
            torch.testing.assert_close(v.norm(), theta[k].norm(), rtol=1e-5, atol=0)
    m = la.directions.gaussian(net, norm="model", seed=1)
    kept = [k for k, v in theta.items() if v.dim() > 1]
    dn = sum(float(m[k].double().norm() ** 2) for k in kept) ** 0.5
    tn = sum(float(theta[k].double().norm() ** 2) for k in kept) ** 0.5
    assert dn == pytest.approx(tn, rel=1e-5)


def test_same_seed_same_direction_and_gaussian_statistics():
    torch.manual_seed(5)
    net = nn.Linear(400, 300)
    a = la.directions.gaussian(net, norm="none", seed=7)
    b = la.directions.gaussian(net, norm="none", seed=7)
    c = la.directions.gaussian(net, norm="none", seed=8)
    assert torch.equal(a["weight"], b["weight"]) and not torch.equal(a["weight"], c["weight"])
    w = a["weight"].reshape(-1)
    # Gaussian, not uniform: kurtosis 3 (uniform: 1.8)
    kurt = float(((w - w.mean()) ** 4).mean() / w.var() ** 2)
    assert abs(float(w.mean())) < 0.01 and abs(float(w.std()) - 1) < 0.01 and abs(kurt - 3) < 0.1
    # the draw is a CPU generator stream, independent of the global RNG
    torch.manual_seed(123)
    assert torch.equal(la.directions.gaussian(net, norm="none", seed=7)["weight"], a["weight"])


def test_from_point_and_selection():
    net = _net()
    d = la.directions.gaussian(net, seed=0, include="4.*")
    assert sorted(d) == ["4.bias", "4.weight"]
    e = la.directions.gaussian(la.params.of(net), seed=0, names=["4.weight", "4.bias"])
    assert torch.equal(d["4.weight"], e["4.weight"])


def test_between_and_save_load(tmp_path):
    net = _net()
    a = la.params.of(net)
    b = a + la.directions.gaussian(net, seed=2)
    d = la.directions.between(a, b)
    for k in a:
        torch.testing.assert_close(d[k], b[k] - a[k])
    g = la.directions.gaussian(net, seed=4, norm="layer")
    p = la.directions.save(g, tmp_path / "g.h5")
    for loaded in (la.directions.load(p), la.load(p)):
        assert all(torch.equal(loaded[k], g[k]) for k in g)
        assert loaded.meta["seed"] == 4 and loaded.meta["norm"] == "layer"
        assert loaded.meta["hash"] == la.params.hash_point(g)


def test_bad_arguments():
    net = _net()
    with pytest.raises(LossAtlasError, match="norm="):
        la.directions.gaussian(net, norm="filters")
    with pytest.raises(LossAtlasError, match="ignore="):
        la.directions.gaussian(net, ignore="bias")
    with pytest.raises(LossAtlasError, match="model_or_point"):
        la.directions.gaussian(3)
