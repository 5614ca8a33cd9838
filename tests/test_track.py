"""la.track.Sharpness: the tracked numbers equal independent computations at the recorded
steps (dense Hessians of the checkpoints; Adam's preconditioner rebuilt from the gradients)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import lossatlas as la
from lossatlas.core.errors import LossAtlasError


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _data(n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,),
                                                                              generator=g)


def _dense_hessian(model, point, X, y):
    names = list(point)

    def f(flat):
        p = la.params.unflatten(flat, point)
        return nn.functional.cross_entropy(torch.func.functional_call(model, p, (X,)), y)

    H = torch.func.hessian(f)(la.params.flatten(point, names))
    return ((H + H.T) / 2).numpy()


def test_tracked_eigenvalues_equal_the_dense_hessian_of_each_checkpoint(tmp_path):
    X, y = _data()
    model = _net()
    sharp = la.track.Sharpness(every=5, k=2, tol=1e-8, trace=True, trace_products=1000)
    run = la.train(model, (X, y), epochs=20, lr=0.5, momentum=0.9, weight_decay=0,
                   batch_size=len(X), record=5, out=tmp_path / "run", progress=False,
                   callbacks=[sharp])
    tab = run.track("sharpness")
    assert tab["step"].tolist() == [0, 5, 10, 15, 20]
    assert (tmp_path / "run" / "sharpness.csv").is_file()
    steps = run.steps
    for i, s in enumerate(tab["step"]):
        j = int(np.flatnonzero(steps == s)[0])
        w = np.linalg.eigvalsh(_dense_hessian(_net(), run.checkpoints[j], X, y))
        assert np.allclose([tab["lambda_1"][i], tab["lambda_2"][i]], w[::-1][:2], rtol=1e-7)
        assert tab["lambda_max"][i] == tab["lambda_1"][i]
        assert math.isclose(tab["trace"][i], w.sum(), rel_tol=1e-8)  # products >= dim: exact
    assert np.allclose(tab["two_over_lr"], 2 / 0.5)
    assert np.allclose(tab["threshold"], (2 + 2 * 0.9) / 0.5)  # heavy ball
    assert np.isfinite(tab["train_loss"]).all() and (tab["seconds"] > 0).all()


@pytest.mark.slow
def test_warm_start_costs_fewer_products_and_reads_back_from_the_folder(tmp_path):
    X, y = _data(n=200)
    kw = dict(epochs=60, lr=0.3, momentum=0, weight_decay=0, batch_size=200, record=None,
              progress=False)
    warm = la.train(_net(), (X, y), out=tmp_path / "w", **kw,
                    callbacks=[la.track.Sharpness(every=2)])
    cold = la.train(_net(), (X, y), **kw, callbacks=[la.track.Sharpness(every=2, warm=False)])
    tw, tc = warm.track("sharpness"), cold.track("sharpness")
    assert np.allclose(tw["lambda_max"], tc["lambda_max"], rtol=1e-5)
    assert tw["products"][1:].mean() < 0.6 * tc["products"][1:].mean()
    back = la.load_run(tmp_path / "w").track("sharpness")
    assert np.array_equal(back["lambda_max"], tw["lambda_max"])
    assert back["step"].tolist() == list(range(0, 61, 2))


def test_adam_preconditioned_sharpness_matches_a_rebuilt_preconditioner():
    """A loop of one's own with a Recorder; P rebuilt from the gradients by hand:
    v = EMA of g², P = (1 − β₁ᵗ)(√(v/(1 − β₂ᵗ)) + ε); λ_max(P⁻¹H) from the dense pencil."""
    X, y = _data()
    model = _net()
    b1, b2, eps, lr = 0.9, 0.99, 1e-8, 0.01
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(b1, b2), eps=eps)
    sharp = la.track.Sharpness(every=3, data=(X, y), tol=1e-8)
    rec = la.Recorder(None, model, callbacks=[sharp])
    rec.step(model, opt, step=0)
    v = [torch.zeros_like(p) for p in model.parameters()]
    want = {}
    for t in range(1, 10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        v = [b2 * vi + (1 - b2) * p.grad.detach() ** 2 for vi, p in zip(v, model.parameters())]
        opt.step()
        if t % 3 == 0:
            P = torch.cat([((1 - b1**t) * (torch.sqrt(vi / (1 - b2**t)) + eps)).reshape(-1)
                           for vi in v]).numpy()
            H = _dense_hessian(model, la.params.of(model), X, y)
            want[t] = scipy.linalg.eigh(H, np.diag(P), eigvals_only=True)[-1]
        rec.step(model, opt)
    tab = rec.finish().track("sharpness")
    assert tab["step"].tolist() == [0, 3, 6, 9]
    assert math.isnan(tab["precond_lambda_max"][0])  # no second moments before the first step
    got = dict(zip(tab["step"][1:].astype(int), tab["precond_lambda_max"][1:]))
    for t, lam in want.items():
        assert math.isclose(got[t], lam, rel_tol=1e-6), (t, got[t], lam)
    assert np.allclose(tab["precond_threshold"], (2 + 2 * b1) / ((1 - b1) * lr))
    assert np.isnan(tab["threshold"]).all()


def test_bad_input():
    with pytest.raises(LossAtlasError, match="every"):
        la.track.Sharpness(every=0)
    model = _net()
    rec = la.Recorder(None, model, callbacks=[la.track.Sharpness(every=1)])
    with pytest.raises(LossAtlasError, match="data"):
        rec.step(model, None, step=0)
    with pytest.raises(LossAtlasError, match="no tracked table"):
        rec.finish().track("sharpness")
    with pytest.raises(LossAtlasError, match="optimizer"):
        la.train(model, _data(), optimizer="lbfgs", progress=False)


def test_an_interrupted_run_continues_its_table(tmp_path):
    """Ctrl-C at step 7, rerun: the table holds every step once, as the uninterrupted run's."""
    X, y = _data(n=64)
    calls = {"n": 0, "at": None}

    def loss(out, t):  # the training loss; raises a KeyboardInterrupt at step calls["at"]
        calls["n"] += 1
        if calls["n"] == calls["at"]:
            raise KeyboardInterrupt
        return nn.functional.cross_entropy(out, t)

    def fit(out, at=None):
        calls.update(n=0, at=at)
        tracker = la.track.Sharpness(every=2, loss="cross_entropy", tol=1e-8)
        return la.train(_net(), (X, y), epochs=4, batch_size=16, lr=0.1, loss=loss, record=2,
                        out=out, progress=False, callbacks=[tracker])

    full = fit(tmp_path / "full").track("sharpness")
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "cut", at=8)  # the 8th call of the loss (evaluations count too)
    part = la.load_run(tmp_path / "cut").track("sharpness")["step"].tolist()
    assert len(part) >= 2 and part == list(range(0, 2 * len(part), 2))
    cont = fit(tmp_path / "cut").track("sharpness")
    assert cont["step"].tolist() == full["step"].tolist() == list(range(0, 17, 2))
    assert np.allclose(cont["lambda_max"], full["lambda_max"], rtol=1e-6)


def test_the_training_summary_names_each_optimizers_own_threshold():
    """``lossatlas train --track sharpness`` prints λ_max beside the optimizer's threshold:
    (2+2β)/η for momentum SGD, and for Adam no λ_max threshold but the preconditioned λ_max
    beside (2+2β₁)/((1−β₁)η) — never 2/lr for an optimizer it does not apply to."""
    from lossatlas.report.text import track_line

    base = {"step": np.array([0, 10]), "lambda_max": np.array([1.0, 30.0]),
            "products": np.array([20, 9, 11])}
    sgd = track_line("sharpness", {**base, "threshold": np.array([38.0, 38.0])}, lr=0.1)
    assert "stability threshold 38)" in sgd and "20)" not in sgd
    adam = track_line("sharpness", {**base, "threshold": np.array([np.nan, np.nan]),
                                    "precond_lambda_max": np.array([np.nan, 2000.0]),
                                    "precond_threshold": np.array([38000.0, 38000.0])},
                      lr=0.001)
    assert "2000)" not in adam and "stability threshold" not in adam
    assert "preconditioned lambda_max 2000 (Adam's threshold 3.8e+04)" in adam
    bare = track_line("sharpness", {**base, "threshold": np.array([np.nan, np.nan])}, lr=0.1)
    assert "no stability threshold" in bare
    old = track_line("sharpness", base, lr=0.1)  # a table written before the column existed
    assert "stability threshold 20)" in old
