"""la.similarity: linear CKA against the paper's HSIC formula, its invariances, mixup samples,
model / layer-wise CKA and the l2 distance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import lossatlas as la
from lossatlas.core.errors import LossAtlasError

S = la.similarity


def _cov(X: np.ndarray, Y: np.ndarray) -> float:
    """Yang et al. Eq. 3: Cov(X, Y) = (m-1)^-2 tr(X X^T H Y Y^T H), H the centering matrix."""
    m = X.shape[0]
    H = np.eye(m) - np.ones((m, m)) / m
    return np.trace(X @ X.T @ H @ Y @ Y.T @ H) / (m - 1) ** 2


def _cka_direct(X, Y) -> float:
    X, Y = np.asarray(X, float), np.asarray(Y, float)
    return _cov(X, Y) / np.sqrt(_cov(X, X) * _cov(Y, Y))


@pytest.mark.parametrize("m,d1,d2", [(40, 5, 7), (6, 30, 20)])  # both Gram forms
def test_cka_matches_centering_matrix_formula(m, d1, d2):
    g = torch.Generator().manual_seed(m)
    X, Y = torch.randn(m, d1, generator=g), torch.randn(m, d2, generator=g)
    Y = Y + 0.5 * X[:, :1]  # some shared signal
    assert S.linear_cka(X, Y) == pytest.approx(_cka_direct(X, Y), rel=1e-10)
    assert S.linear_cka(X, Y) == pytest.approx(S.linear_cka(Y, X), rel=1e-12)
    assert 0.0 <= S.linear_cka(X, Y) <= 1.0


def test_cka_identity_orthogonal_and_scale_invariance():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 10, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    assert S.linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert S.linear_cka(X, X @ Q) == pytest.approx(1.0, abs=1e-12)
    assert S.linear_cka(X, 7.5 * X) == pytest.approx(1.0, abs=1e-12)
    Y = torch.randn(64, 6, generator=g, dtype=torch.float64)
    base = S.linear_cka(X, Y)
    assert S.linear_cka(3.0 * X @ Q, 0.2 * Y) == pytest.approx(base, rel=1e-10)
    assert S.linear_cka(X + 5.0, Y - 2.0) == pytest.approx(base, rel=1e-10)  # centering
    # not invariant to a general invertible map (CKA is not CCA)
    A = torch.randn(10, 10, generator=g, dtype=torch.float64)
    assert abs(S.linear_cka(X, X @ A) - 1.0) > 1e-3


def test_cka_bad_input():
    with pytest.raises(LossAtlasError, match="same samples"):
        S.linear_cka(torch.randn(5, 2), torch.randn(6, 2))
    with pytest.raises(LossAtlasError, match="one row per sample"):
        S.linear_cka(torch.randn(5), torch.randn(5))


def test_mixup_lambda_is_beta16():
    # rows 0 and 1: every sample is lambda or 1 - lambda, both Beta(16, 16)
    X = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    lam = S.mixup_samples(X, m=4000, alpha=16, seed=3)[:, 0].numpy()
    assert lam.shape == (4000,)
    assert stats.kstest(lam, stats.beta(16, 16).cdf).pvalue > 1e-3
    assert np.var(lam) == pytest.approx(1 / (4 * 33), rel=0.1)
    # deterministic in the seed, different across seeds
    assert torch.equal(S.mixup_samples(X, 50, seed=1), S.mixup_samples(X, 50, seed=1))
    assert not torch.equal(S.mixup_samples(X, 50, seed=1), S.mixup_samples(X, 50, seed=2))


def test_mixup_samples_lie_between_two_inputs():
    X = torch.arange(10.0).reshape(10, 1) * torch.tensor([[1.0, 100.0]])
    Z = S.mixup_samples((X, torch.zeros(10)), m=200, seed=0)
    assert Z.shape == (200, 2)
    # the second coordinate is 100x the first: a convex combination keeps that
    assert torch.allclose(Z[:, 1], 100 * Z[:, 0])
    assert float(Z.min()) >= 0.0 and float(Z[:, 0].max()) <= 9.0


def test_noise_samples_bounded():
    X = torch.zeros(5, 3, 4)
    Z = S.noise_samples(X, m=100, magnitude=0.2, seed=0)
    assert Z.shape == (100, 3, 4) and float(Z.abs().max()) <= 0.2 and float(Z.std()) > 0.05


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


def _permuted(model: nn.Module, perm: torch.Tensor) -> nn.Module:
    """The same function with the hidden units permuted."""
    other = _mlp(99)
    with torch.no_grad():
        other[0].weight.copy_(model[0].weight[perm])
        other[0].bias.copy_(model[0].bias[perm])
        other[2].weight.copy_(model[2].weight[:, perm])
        other[2].bias.copy_(model[2].bias)
    return other


def test_model_cka_same_function_is_one_and_layerwise():
    X = torch.randn(100, 6, generator=torch.Generator().manual_seed(0))
    a = _mlp(0)
    b = _permuted(a, torch.randperm(16, generator=torch.Generator().manual_seed(1)))
    assert S.model_cka(a, b, X, m=200) == pytest.approx(1.0, abs=1e-6)
    layer = S.model_cka(a, b, X, m=200, layers=["0", "2"])
    assert layer["0"] == pytest.approx(1.0, abs=1e-6)  # a permutation is orthogonal
    assert layer["2"] == pytest.approx(1.0, abs=1e-6)
    c = _mlp(5)
    other = S.model_cka(a, c, X, m=200)
    assert 0.0 < other < 0.999
    # model_b as a state dict; samples= alias; the same mixup samples for a seed
    assert S.model_cka(a, c.state_dict(), X, samples=200) == pytest.approx(other, rel=1e-9)


def test_model_cka_equals_cka_of_softmax_on_mixup():
    X = torch.randn(50, 6, generator=torch.Generator().manual_seed(0))
    a, b = _mlp(0), _mlp(1)
    a.train()
    Z = S.mixup_samples(X, m=64, seed=4)
    with torch.no_grad():
        want = S.linear_cka(torch.softmax(a(Z), -1), torch.softmax(b(Z), -1))
    assert S.model_cka(a, b, X, m=64, seed=4, batch_size=10) == pytest.approx(want, rel=1e-9)
    assert a.training  # flags restored
    noisy = S.model_cka(a, b, X, m=64, seed=4, noise=0.5)
    assert noisy != pytest.approx(want)


def test_layers_must_exist():
    with pytest.raises(LossAtlasError, match="not submodules"):
        S.model_cka(_mlp(0), _mlp(1), torch.randn(10, 6), m=8, layers=["nope"])


def test_l2_distance():
    a, b = _mlp(0), _mlp(1)
    with torch.no_grad():
        want = float(torch.cat([(p.double() - q.double()).flatten()
                                for p, q in zip(a.parameters(), b.parameters())]).norm())
    assert S.l2_distance(a, b) == pytest.approx(want, rel=1e-12)
    assert S.l2_distance(la.params.of(a), b.state_dict()) == pytest.approx(want, rel=1e-12)
    assert S.l2_distance(a, a) == 0.0
