"""Mining (Li, Li, Zhan 2024, Algorithms 1 and 2) on quadratics where the updates and their
limits are known in closed form; cosine profiles, Gaussian angles and descent curves."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import lossatlas as la
from lossatlas.core.errors import LossAtlasError
from lossatlas.measurements import mining


class Quad(nn.Module):
    """L(w) = ½ (w − c)ᵀ A (w − c) for every sample (the data only sets the batches)."""

    def __init__(self, A, w0, c):
        super().__init__()
        self.w = nn.Parameter(w0.clone())
        self.register_buffer("A", A)
        self.register_buffer("c", c)

    def forward(self, x):
        r = self.w - self.c
        return (0.5 * r @ self.A @ r).expand(x.shape[0])


def mean_out(out, target):
    return out.mean()


def quad_obj(A, w0, c=None, n=40, batch_size=4):
    c = torch.zeros_like(w0) if c is None else c
    model = Quad(A, w0, c).double()
    X, y = torch.zeros(n, 1, dtype=torch.float64), torch.zeros(n)
    return la.Objective(model, (X, y), loss=mean_out, batch_size=batch_size)


def rotation(d, seed=0):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q


def test_w_peak_replays_algorithm_1_exactly():
    Q = rotation(4)
    A = Q @ torch.diag(torch.tensor([-1.0, 0.5, 1.0, 2.0], dtype=torch.float64)) @ Q.T
    w0 = torch.tensor([1.0, -0.5, 0.3, 2.0], dtype=torch.float64)
    obj = quad_obj(A, w0)
    res = mining.mine_w_peak(obj, epochs=3, lr=0.1, seed=5, progress=False)
    T = 3 * len(obj.batches)
    assert len(res.lambdas) == T
    # alpha ramps linearly to 1 and every lambda lies in [-alpha, alpha]
    np.testing.assert_allclose(res.alphas, np.arange(1, T + 1) / T)
    assert np.all(np.abs(res.lambdas) <= res.alphas)
    # first step by hand: eps_1 = -eta * lam_1 * A theta  (eps_0 = 0)
    lam = res.lambdas
    eps = torch.zeros(4, dtype=torch.float64)
    for t in range(T):
        eps = eps - 0.1 * lam[t] * (A @ (w0 + lam[t] * eps))
        if t == 0:
            first = eps.clone()
            np.testing.assert_allclose(first, -0.1 * lam[0] * (A @ w0), rtol=1e-12)
    np.testing.assert_allclose(res.direction["w"], eps, rtol=1e-10, atol=1e-12)
    # per-step losses are the batch loss at theta_hat
    assert res.losses[0] == pytest.approx(0.5 * float((w0 + 0) @ A @ w0), rel=1e-9)


def test_w_peak_long_run_aligns_with_most_negative_eigenvector():
    Q = rotation(5, seed=1)
    vals = torch.tensor([-1.0, -0.2, 0.5, 1.0, 2.0], dtype=torch.float64)
    A = Q @ torch.diag(vals) @ Q.T
    w0 = Q @ torch.ones(5, dtype=torch.float64)  # a non-stationary center
    obj = quad_obj(A, w0, n=200, batch_size=1)
    res = mining.mine_w_peak(obj, epochs=8, lr=0.1, seed=0, progress=False)
    # E[eps'] = (I - eta E[lam^2] A) eps: the most negative curvature grows fastest
    cos = [abs(la.params.cosine(res.direction, {"w": Q[:, i]})) for i in range(5)]
    assert cos[0] > 0.99, cos
    # the mined line falls on both sides of theta: L(theta ± eps) < L(theta)
    lc = obj.loss()
    assert obj.loss(la.params.axpy(obj.center, [1.0], [res.direction])) < lc
    assert obj.loss(la.params.axpy(obj.center, [-1.0], [res.direction])) < lc


def test_vvv_basin_replays_algorithm_2_and_reaches_fixed_point():
    Q = rotation(3, seed=2)
    A = Q @ torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)) @ Q.T
    c = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    theta = torch.tensor([-1.0, 0.0, 3.0], dtype=torch.float64)
    obj = quad_obj(A, theta, c=c)
    gamma, lr = 0.5, 0.1
    res = mining.mine_vvv_basin(obj, epochs=2, lr=lr, alpha=0.1, gamma=gamma, init="center",
                                seed=3, progress=False)
    phi = theta.clone()
    for lam in res.lambdas:
        assert 0.4 <= lam <= 0.6
        hat = (1 - lam) * theta + lam * phi
        phi = phi - lr * (A @ (phi - c) + gamma * lam * (A @ (hat - c)))
    np.testing.assert_allclose(res.phi["w"], phi, rtol=1e-10)
    np.testing.assert_allclose(res.direction["w"], phi - theta, rtol=1e-10)
    # alpha = 0 (lam = 1/2): grad of Eq. 3 vanishes at phi* = c - gamma/(4+gamma) (theta - c)
    res = mining.mine_vvv_basin(obj, epochs=40, lr=lr, alpha=0.0, gamma=gamma, init="center",
                                progress=False)
    want = c - gamma / (4 + gamma) * (theta - c)
    np.testing.assert_allclose(res.phi["w"], want, rtol=1e-8)


def test_vvv_random_init_and_save_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    X, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    obj = la.Objective(model, (X, y), batch_size=16)
    before = la.params.of(model)
    state = torch.random.get_rng_state()
    phi0 = mining.fresh_init(model, obj.names, seed=1)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    assert all(torch.equal(before[k], v) for k, v in la.params.of(model).items())
    assert not torch.equal(phi0["0.weight"], before["0.weight"])
    assert torch.equal(phi0["0.weight"], mining.fresh_init(model, obj.names, seed=1)["0.weight"])
    res = mining.mine_vvv_basin(obj, epochs=2, seed=1, progress=False)
    assert res.settings["init"] == "random" and np.all(res.lambdas == 0.5)
    back = la.load(res.save(tmp_path / "m.h5"))
    assert back.algorithm == "vvv-basin"
    assert torch.equal(back.direction["0.weight"], res.direction["0.weight"])
    d = la.directions.parse_direction(f"mined:{tmp_path / 'm.h5'}", obj)
    assert torch.equal(d["2.bias"], res.direction["2.bias"])


def test_mining_rejects_bad_settings():
    obj = quad_obj(torch.eye(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    with pytest.raises(LossAtlasError, match="epochs"):
        mining.mine_w_peak(obj, epochs=0)
    with pytest.raises(LossAtlasError, match="alpha"):
        mining.mine_vvv_basin(obj, alpha=0.7)
    with pytest.raises(LossAtlasError, match="init"):
        mining.mine_vvv_basin(obj, init="zeros")


def test_cosine_profile_order_and_values():
    basis = torch.eye(6)
    vecs = [{"w": basis[i]} for i in range(6)]
    neg = SimpleNamespace(values=[-0.1, -3.0, -1.0], vectors=vecs[:3])   # unsorted on purpose
    pos = SimpleNamespace(values=[1.0, 5.0, 2.0], vectors=vecs[3:])
    d = {"w": torch.tensor([0.0, 3.0, 0.0, 0.0, 4.0, 0.0])}
    prof = mining.cosine_profile(d, k=3, negative=neg, positive=pos)
    assert prof.labels == ["N.E.1", "N.E.2", "N.E.3", "P.E.3", "P.E.2", "P.E.1"]
    np.testing.assert_allclose(prof.eigenvalues, [-3, -1, -0.1, 1, 2, 5])
    np.testing.assert_allclose(prof.values, [0.6, 0, 0, 0, 0, 0.8], atol=1e-12)


def test_gaussian_angles_concentrate_at_90_degrees():
    center = {"w": torch.randn(20000, generator=torch.Generator().manual_seed(0))}
    same = la.directions.gaussian(center, norm="none", seed=3, ignore=None)
    target = {"w": torch.ones(20000)}
    res = mining.gaussian_angles(center, {"ones": target, "seed3": same}, samples=8,
                                 progress=False)
    assert res.angles.shape == (2, 8)
    # std of the angle is 1/sqrt(d) rad = 0.4 degrees here
    assert np.all(np.abs(res.angles[0] - 90) < 2.5)
    assert res.angles[1, 3] == pytest.approx(0.0, abs=1e-3)  # sample seed 3 is the target


def test_descent_curves_first_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X, y = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 3, (30,))
    obj = la.Objective(model, (X, y))
    res = mining.descent_vs_gaussian(obj, samples=5, scales=(1e-4, 0.1), points=5,
                                     progress=False)
    g2 = float(obj.grad().norm() ** 2)
    x = res.x[0]
    slope = (res.gradient[0, -1] - res.gradient[0, 0]) / (x[-1] - x[0])
    assert slope == pytest.approx(-g2, rel=1e-3)     # dL/dλ along −g is −‖g‖²
    assert res.gradient[0, 2] == pytest.approx(obj.loss())
    assert -1 <= res.cosine <= 1 and res.gaussian.shape == (2, 5)
    assert np.isfinite(res.gaussian).all()
