"""la.sharpness (Andriushchenko et al. 2023): invariances, the second-order identity against
the exact Hessian diagonal, the worst case against a closed form and against the authors'
procedure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import lossatlas as la
from lossatlas.core.errors import LossAtlasError


def _relu_net(seed=0, d=5, h=8, c=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c)).double()


def _data(n=60, d=5, c=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, c, (n,),
                                                                              generator=g)


def _rescaled(model, alpha):
    """W1 -> αW1, b1 -> αb1, W2 -> W2/α: the same function around the ReLU."""
    other = _relu_net()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other[0].weight.mul_(alpha)
        other[0].bias.mul_(alpha)
        other[2].weight.div_(alpha)
    return other


@pytest.mark.parametrize("norm,rho", [("l2", 0.3), ("linf", 0.05)])
def test_adaptive_is_invariant_under_relu_rescaling(norm, rho):
    X, y = _data()
    a = _relu_net()
    b = _rescaled(a, 3.0)
    oa, ob = la.Objective(a, (X, y)), la.Objective(b, (X, y))
    assert abs(oa.loss() - ob.loss()) < 1e-12  # the same function
    for kind in ("worst", "average"):
        sa = la.sharpness.sharpness(oa, rho, kind, norm=norm, adaptive=True, seed=3)
        sb = la.sharpness.sharpness(ob, rho, kind, norm=norm, adaptive=True, seed=3)
        assert sa.value != 0
        assert math.isclose(sa.value, sb.value, rel_tol=1e-9), (kind, sa.value, sb.value)
        na = la.sharpness.sharpness(oa, rho / 10, kind, norm=norm, adaptive=False, seed=3)
        nb = la.sharpness.sharpness(ob, rho / 10, kind, norm=norm, adaptive=False, seed=3)
        assert abs(na.value - nb.value) > 0.05 * abs(na.value), (kind, na.value, nb.value)


def _hessian_diagonal(model, X, y):
    theta = la.params.of(model)

    def f(flat):
        p = la.params.unflatten(flat, theta)
        return nn.functional.cross_entropy(torch.func.functional_call(model, p, (X,)), y)

    return torch.diagonal(torch.func.hessian(f)(la.params.flatten(theta)))


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("adaptive", [True, False])
def test_small_rho_average_case_is_half_rho_squared_c2_hessian_diagonal(norm, adaptive):
    """S_avg = ½ Σ cᵢ² Hᵢᵢ Var(uᵢ) + O(ρ⁴) (antithetic pairs cancel the odd terms); the Monte
    Carlo estimate agrees within 4 standard errors, and its error is small."""
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    X, y = _data()
    obj = la.Objective(model, (X, y))
    theta = la.params.of(model)
    c = la.params.flatten(theta).abs()
    c = c if adaptive else torch.ones_like(c)
    rho = 1e-2 if adaptive else 1e-3
    exact = la.sharpness.second_order_average(_hessian_diagonal(model, X, y), c, rho, norm)
    est = la.sharpness.average_case(obj, rho, adaptive=adaptive, norm=norm, samples=1000, seed=0)
    assert est.error < 0.05 * exact
    assert abs(est.value - exact) < 4 * est.error, (est.value, exact, est.error)


def test_worst_case_of_a_linear_loss_is_rho_times_dual_norm():
    """For L(w) = gᵀw (exactly linear) the maximum over ‖u‖ ≤ ρ of gᵀ(c⊙u) is ρ‖c⊙g‖_q."""
    model = nn.Linear(4, 1, bias=False).double()
    X = torch.randn(30, 4, dtype=torch.float64)
    obj = la.Objective(model, (X, torch.zeros(30)), loss=lambda out, t: out.mean())
    g = X.mean(0)
    w = model.weight.detach().reshape(-1)
    for norm, adaptive, q in [("l2", False, 2), ("linf", False, 1), ("l2", True, 2),
                              ("linf", True, 1)]:
        c = w.abs() if adaptive else torch.ones(4, dtype=torch.float64)
        want = 0.2 * float(torch.linalg.vector_norm(c * g, ord=q))
        for method in ("ascent", "apgd"):
            s = la.sharpness.worst_case(obj, 0.2, norm=norm, adaptive=adaptive, method=method)
            tol = 1e-9 if method == "ascent" else 1e-4  # the first ascent step is the maximizer
            assert math.isclose(s.value, want, rel_tol=tol), (norm, adaptive, method, s.value)


def test_worst_case_of_a_quadratic_is_rho_squared_lambda_max_over_two():
    """L(w) = ½ wᵀAw at w = 0 (no gradient): ascent from random restarts finds ½ρ²λ_max(A)."""
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    X = torch.zeros(1, 2, dtype=torch.float64)

    quad = _Quadratic(A)
    obj = la.Objective(quad, (X, torch.zeros(1)), loss=lambda out, t: out.mean())
    s = la.sharpness.worst_case(obj, 0.5, adaptive=False, restarts=3, steps=30, seed=0)
    lam = float(torch.linalg.eigvalsh(A)[-1])
    assert math.isclose(s.value, 0.5 * 0.25 * lam, rel_tol=1e-4), s.value


class _Quadratic(nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = A
        self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, x):
        return (0.5 * self.w @ self.A @ self.w).expand(len(x))


def test_m_sharpness_is_the_mean_over_batches_of_m():
    X, y = _data(n=40)
    model = _relu_net()
    obj = la.Objective(model, (X, y))
    s = la.sharpness.worst_case(obj, 0.2, m=10, steps=4, seed=1)
    assert len(s.per_batch) == 4 and math.isclose(s.value, float(np.mean(s.per_batch)))
    parts = [la.sharpness.worst_case(la.Objective(model, (X[i:i + 10], y[i:i + 10])), 0.2,
                                     steps=4, seed=1).value for i in range(0, 40, 10)]
    assert np.allclose(s.per_batch, parts, rtol=1e-9)
    assert s.error > 0  # spread across batches


def test_ascent_reaches_the_authors_procedure_in_half_the_gradients():
    X, y = _data(n=200)
    model = _relu_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    obj = la.Objective(model, (X, y))
    for norm, rho in [("l2", 0.2), ("linf", 0.02)]:
        ref = la.sharpness.worst_case(obj, rho, norm=norm, method="apgd", steps=20, seed=0)
        ours = la.sharpness.worst_case(obj, rho, norm=norm)
        assert ours.gradients <= ref.gradients / 2
        assert ours.value >= 0.99 * ref.value, (norm, ours.value, ref.value)


def test_result_saves_and_bad_input():
    X, y = _data()
    obj = la.Objective(_relu_net(), (X, y))
    with pytest.raises(LossAtlasError, match="rho"):
        la.sharpness.worst_case(obj, -1.0)
    with pytest.raises(LossAtlasError, match="norm"):
        la.sharpness.average_case(obj, 0.1, norm="l1")
    with pytest.raises(LossAtlasError, match="kind"):
        la.sharpness.sharpness(obj, 0.1, "median")
    with pytest.raises(LossAtlasError, match="m="):
        la.sharpness.worst_case(obj, 0.1, m=0)


def test_sweep_records_sharpness_on_the_hessian_batch(tmp_path):
    from lossatlas import sweeps as S
    from lossatlas.sweeps import jobs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    train = la.datasets.ArrayDataset(torch.randn(300, 10), torch.randint(0, 3, (300,)))
    measure = {"hessian_samples": 200, "sharpness": {"rho": 0.1, "norm": "linf"}}
    got = jobs._sharpness(model, train, measure, seed=3)
    obj = la.Objective(model, jobs._hessian_batch(train, 200, 3))
    assert got == la.sharpness.worst_case(obj, 0.1, norm="linf", seed=3).value
    toml = """
name = "t"
[data]
name = "digits"
[model]
name = "mlp"
[load]
param = "width"
values = [4]
[temperature]
param = "batch_size"
values = [32]
"""
    (tmp_path / "a.toml").write_text(toml)
    (tmp_path / "b.toml").write_text(toml + "[measure.sharpness]\nrho = 0.1\n")
    a, b = S.load_spec(tmp_path / "a.toml"), S.load_spec(tmp_path / "b.toml")
    assert b.measure["sharpness"] == {"rho": 0.1}
    ca, cb = S.cells(a)[0], S.cells(b)[0]
    assert ca.train_key(0) == cb.train_key(0) and ca.model_key(0) != cb.model_key(0)
