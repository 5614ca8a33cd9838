"""la.hessian against exact Hessians: torch.func.hessian of small nets and a quadratic loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lossatlas as la
from lossatlas.core.errors import LossAtlasError
from lossatlas.measurements.hessian import HessianOperator


def _net(seed=0, d=6, h=12, c=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c)).double()


def _data(n=53, d=6, c=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, c, (n,),
                                                                              generator=g)


def _exact(model, X, y, names=None):
    theta = la.params.of(model)
    names = list(theta) if names is None else names
    fixed = {k: v for k, v in theta.items() if k not in names}

    def f(flat):
        p = {**fixed, **la.params.unflatten(flat, {k: theta[k] for k in names})}
        out = torch.func.functional_call(model, p, (X,))
        return nn.functional.cross_entropy(out, y)

    H = torch.func.hessian(f)(la.params.flatten(theta, names))
    return (H + H.T) / 2


@pytest.fixture(scope="module")
def case():
    model = _net()
    X, y = _data()
    obj = la.Objective(model, (X, y), batch_size=10)  # 10 does not divide 53
    H = _exact(model, X, y)
    w, V = torch.linalg.eigh(H)
    return obj, H, w.numpy(), V.numpy()


@pytest.mark.parametrize("method", ["graph", "double", "fwdrev", "vmap"])
def test_products_match_exact_mean_hessian(case, method):
    """Every HVP way gives the Hessian of the full-data mean (batch 10 does not divide 53: a sum
    of per-batch means would be off by the last batch's weight)."""
    obj, H, _, _ = case
    op = HessianOperator(obj, method=method)
    V = torch.randn(op.dim, 3, dtype=torch.float64)
    assert torch.allclose(op.matmat(V), H @ V, atol=1e-10)
    assert op.matvecs == 3
    single = op.matmat(V[:, 0])
    assert single.shape == (op.dim,) and torch.allclose(single, H @ V[:, 0], atol=1e-10)


def test_sum_of_batch_means_would_differ(case):
    """The guard above has teeth: the unweighted average of batch Hessians is not H."""
    obj, H, _, _ = case
    op = HessianOperator(obj)
    v = torch.randn(op.dim, dtype=torch.float64)
    naive = 0
    for b in obj.batches:
        sub = la.Objective(obj.model, (b.inputs, b.targets), check=False)
        naive = naive + HessianOperator(sub).matmat(v) / len(obj.batches)
    assert not torch.allclose(naive, H @ v, atol=1e-6)
    assert torch.allclose(op.matmat(v), H @ v, atol=1e-10)


@pytest.mark.parametrize("method", ["lanczos", "arpack"])
def test_top_and_bottom_eigenpairs(case, method):
    obj, _, w, V = case
    top = la.hessian.eigs(obj, k=3, which="LA", tol=1e-8, method=method)
    bot = la.hessian.eigs(obj, k=3, which="SA", tol=1e-8, method=method)
    np.testing.assert_allclose(top.values, w[-3:], rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(bot.values, w[:3], rtol=1e-7, atol=1e-12)
    for spec, cols in ((top, V[:, -3:]), (bot, V[:, :3])):
        for vec, col in zip(spec.vectors, cols.T):
            flat = la.params.flatten(vec).numpy()
            assert abs(abs(flat @ col) - 1) < 1e-6  # same vector up to sign
        assert np.all(spec.residuals <= 1e-6 * np.abs(spec.values) + 1e-12)
    assert [v.meta["name"] for v in top.vectors] == ["P.E.3", "P.E.2", "P.E.1"]
    assert [v.meta["name"] for v in bot.vectors] == ["N.E.1", "N.E.2", "N.E.3"]
    assert top.matvecs > 0 and set(top.vectors[0]) == set(obj.names)


def test_both_ends(case):
    obj, _, w, _ = case
    spec = la.hessian.eigs(obj, k=2, which="both", tol=1e-8)
    np.testing.assert_allclose(spec.values, np.r_[w[:2], w[-2:]], rtol=1e-7, atol=1e-12)


def test_block_spectrum_is_the_diagonal_block():
    model = _net(seed=3)
    X, y = _data(seed=4)
    obj = la.Objective(model, (X, y), batch_size=16)
    names = ["2.weight", "2.bias"]
    w = torch.linalg.eigvalsh(_exact(model, X, y, names)).numpy()
    spec = la.hessian.eigs(obj, k=2, which="both", tol=1e-9, params="2.*")
    np.testing.assert_allclose(spec.values, np.r_[w[:2], w[-2:]], rtol=1e-7, atol=1e-12)
    assert spec.params == names
    vec = spec.vectors[0]
    assert float(vec["0.weight"].abs().sum()) == 0.0 and float(vec["2.weight"].norm()) > 0
    tr = la.hessian.trace_estimate(obj, params=names, products=10, method="hutchinson")
    assert tr.params == names
    with pytest.raises(LossAtlasError, match="params="):
        la.hessian.eigs(obj, params="nope.*")


def test_quadratic_loss_with_known_hessian():
    """L(w) = mean_i ½ (x_iᵀw − y_i)² has H = XᵀX/N exactly (mse on a bias-free linear map)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(41, 7, generator=g, dtype=torch.float64)
    y = torch.randn(41, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(7, 1, bias=False).double()
    obj = la.Objective(model, (X, y), loss="mse", batch_size=9)
    H = X.T @ X / 41 * 2  # F.mse_loss is mean (x·w − y)², Hessian 2XᵀX/N
    w = torch.linalg.eigvalsh(H).numpy()
    spec = la.hessian.eigs(obj, k=2, which="both", tol=1e-10)
    np.testing.assert_allclose(spec.values, np.r_[w[:2], w[-2:]], rtol=1e-9)
    est = la.hessian.trace_estimate(obj, products=7, method="hutchinson")  # budget = dim: exact
    assert est.products == 7 and est.method == "exact" and est.error == 0
    assert abs(est.value - float(torch.trace(H))) < 1e-10


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_trace_estimators_are_unbiased_with_honest_errors(method):
    """On a fixed symmetric matrix: the mean over seeds converges to the trace, and the
    reported error matches the spread over seeds within a factor 2."""
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64))
    lam = 1.0 / (1 + torch.arange(300.0, dtype=torch.float64)) ** 0.7
    lam[-20:] *= -0.3
    A = (Q * lam) @ Q.T
    vals, errs = [], []
    for s in range(40):
        v, e, _ = la.hessian.trace_of(lambda X: A @ X, 300, 60, method, seed=s)
        vals.append(v)
        errs.append(e)
    true = float(lam.sum())
    spread = np.std(vals)
    assert abs(np.mean(vals) - true) < 4 * spread / np.sqrt(40)
    assert 0.5 < np.median(errs) / spread < 2.0


def test_trace_and_density_against_exact(case):
    obj, H, w, _ = case
    true = float(torch.trace(H))
    est = la.hessian.trace_estimate(obj, products=60)  # xtrace, 30 vectors in 75 dimensions
    assert abs(est.value - true) < 5 * est.error + 1e-9 and est.products == 60
    dens = la.hessian.density(obj, steps=len(w))
    assert abs(np.trapezoid(dens.density, dens.grid) - 1) < 1e-9
    assert dens.lambda_min >= w[0] - 1e-8 and dens.lambda_max <= w[-1] + 1e-8
    # a run to exhaustion finds only true eigenvalues (multiple ones once: Krylov sees one copy)
    nodes = dens.ritz_values[dens.ritz_weights > 1e-12]
    assert np.abs(nodes[:, None] - w[None, :]).min(1).max() < 1e-8
    np.testing.assert_allclose(dens.ritz_weights.sum(1), 1.0, rtol=1e-10)
    small = la.hessian.density(obj, steps=10)
    assert w[0] - 1e-8 <= small.lambda_min and small.lambda_max <= w[-1] + 1e-8
    assert abs(np.trapezoid(small.density, small.grid) - 1) < 1e-9


def test_power_iteration_matches_top_eigenvalue_to_pyhessian_accuracy(case):
    obj, _, w, _ = case
    spec = la.hessian.power(obj)
    assert abs(spec.values[-1] - w[-1]) / w[-1] < 1e-2
    assert spec.matvecs <= 100 and spec.method == "power"


def test_results_save_and_load(case, tmp_path):
    obj, _, _, _ = case
    spec = la.hessian.eigs(obj, k=2)
    back = la.load(spec.save(tmp_path / "s.h5"))
    np.testing.assert_allclose(back.values, spec.values)
    assert back.vectors[1].meta["name"] == "P.E.1"
    dens = la.load(la.hessian.density(obj, steps=8).save(tmp_path / "d.h5"))
    assert dens.grid.shape == dens.density.shape
    tr = la.load(la.hessian.trace_estimate(obj, products=8).save(tmp_path / "t.h5"))
    assert tr.products == 8


def test_bad_input():
    X = torch.randn(8, 3, dtype=torch.float64)
    obj = la.Objective(nn.Linear(3, 2).double(), (X, torch.randint(0, 2, (8,))))
    with pytest.raises(LossAtlasError, match="which="):
        la.hessian.eigs(obj, which="LM")
    with pytest.raises(LossAtlasError, match="k="):
        la.hessian.eigs(obj, k=8)
    with pytest.raises(LossAtlasError, match="method="):
        la.hessian.trace(obj, method="magic")
    with pytest.raises(LossAtlasError, match="steps="):
        la.hessian.density(obj, steps=1)


def test_second_order_is_exact_on_a_quadratic_loss():
    """For mse on a linear map the loss is exactly quadratic: δL = λb + ½λ²a is the true change,
    and every local piece lies on the true curve."""
    g = torch.Generator().manual_seed(2)
    X = torch.randn(30, 4, generator=g, dtype=torch.float64)
    y = torch.randn(30, 2, generator=g, dtype=torch.float64)
    model = nn.Linear(4, 2).double()
    obj = la.Objective(model, (X, y), loss="mse", batch_size=7)
    dist = la.hessian.delta_distribution(obj, lambdas=(0.001, 0.01, 0.5), samples=12, sigma=0.7)
    assert dist.predicted.shape == dist.true.shape == (3, 12)
    np.testing.assert_allclose(dist.predicted, dist.true, rtol=1e-8, atol=1e-12)
    eps = la.hessian.second_order.gaussian(obj, 1.0, seed=5)
    a, b = la.hessian.quadratic_coefficients(obj, [eps])
    H = 2 * torch.kron(torch.eye(2, dtype=torch.float64), torch.cat(
        [X, torch.ones(30, 1, dtype=torch.float64)], 1).T @ torch.cat(
        [X, torch.ones(30, 1, dtype=torch.float64)], 1) / 60)
    e = torch.cat([torch.cat([eps["weight"][i], eps["bias"][i:i + 1]]) for i in range(2)])
    assert abs(a[0] - float(e @ H @ e)) < 1e-9
    assert abs(b[0] - float(la.params.dot(eps, obj.grad()))) < 1e-10
    path = la.hessian.local_quadratics(obj, eps, lambdas=[-1.0, -0.5, 0.0], points=9)
    for k in range(3):
        x, q = path.piece(k, points=5)
        np.testing.assert_allclose(q, obj.loss_batch([la.params.axpy(obj.center, [xi], [eps])
                                                      for xi in x]), rtol=1e-8)
    theta0 = {k: v + 1.0 for k, v in obj.center.items()}
    m = la.hessian.mli(obj, theta0, lambdas=[-1.0, 0.0], points=5)
    assert m.kind == "MLI" and abs(m.loss[0] - obj.loss(theta0)) < 1e-10


def test_lanczos_residuals_are_the_true_residuals(case):
    """|β_m s_{m,i}| (free) equals ‖Hv − θv‖ recomputed with extra products."""
    obj, _, _, _ = case
    free = la.hessian.eigs(obj, k=3, which="SA", tol=1e-4)
    paid = la.hessian.eigs(obj, k=3, which="SA", tol=1e-4, exact_residuals=True)
    assert paid.matvecs == free.matvecs + 3
    np.testing.assert_allclose(free.residuals, paid.residuals, rtol=1e-3, atol=1e-12)


def test_batchnorm_is_in_eval_mode():
    """With BN the Hessian is that of the eval-mode network (running statistics held fixed),
    whatever the batch size."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    X, y = _data(n=25, d=4)
    model.train()
    model(X)  # non-trivial running statistics
    obj = la.Objective(model, (X, y), batch_size=7)
    model.eval()
    H = _exact(model, X, y)
    model.train()
    op = HessianOperator(obj)
    V = torch.randn(op.dim, 2, dtype=torch.float64)
    assert torch.allclose(op.matmat(V), H @ V, atol=1e-10)
    assert model.training  # the user's flags are untouched


def test_auto_measures_graph_against_vmap_for_many_vectors(case):
    obj, H, _, _ = case
    op = HessianOperator(obj)
    V = torch.randn(op.dim, 5, dtype=torch.float64)
    for _ in range(3):  # graph, then vmap, then the faster: the same numbers every time
        assert torch.allclose(op.matmat(V), H @ V, atol=1e-10)
    assert set(op._multi) == {"graph", "vmap"} and op.matvecs == 15
