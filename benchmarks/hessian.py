"""Hessian benchmark: HVP ways, top-1, SA-5 and trace against the exact Hessian and the peers.

Workload: MLP 64-128-10 (9,610 parameters) on all 1,797 samples of scikit-learn's digits
(standardized), trained with the demo's recipe (SGD lr 0.1, momentum 0.9, weight decay 5e-4,
batch 128, 30 epochs, seed 0). The exact Hessian (float64, 9,610 products + eigh, a few minutes)
is cached under ``$LOSSATLAS_BENCH_CACHE`` (default ``~/.cache/lossatlas``).

    .venv/bin/python benchmarks/hessian.py [--reps 7] [--seeds 20] [--skip-sa]

Timings are medians over interleaved repetitions (the cores are shared); every method includes
building its graph / operator. Columns: time, Hessian-vector products, relative error.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from sklearn.datasets import load_digits
from torch import nn

import lossatlas as la
from lossatlas.measurements.hessian import HessianOperator, eigs, power, trace_of


def workload(dtype=torch.float32):
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    X, y = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.to(dtype), X.to(dtype), y


def exact(model, X, y):
    """(eigenvalues ascending, 10 bottom and 10 top eigenvectors, dense H) in float64, cached."""
    theta = la.params.of(model)
    cache = Path(os.environ.get("LOSSATLAS_BENCH_CACHE", Path.home() / ".cache" / "lossatlas"))
    path = cache / f"hessian-exact-{la.params.hash_point(theta)}.npz"
    if path.exists():
        z = np.load(path)
        return z["w"], z["V"], z["H"]
    m64 = model.double()
    op = HessianOperator(la.Objective(m64, (X.double(), y)), method="graph")
    eye = torch.eye(op.dim, dtype=torch.float64)
    cols = [op.matmat(eye[:, i:i + 256]) for i in la._progress.track(
        range(0, op.dim, 256), "exact Hessian")]
    H = torch.cat(cols, 1)
    H = ((H + H.T) / 2).numpy()
    w, V = np.linalg.eigh(H)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, w=w, V=np.concatenate([V[:, :10], V[:, -10:]], 1), H=H.astype(np.float32))
    model.float()
    return w, np.concatenate([V[:, :10], V[:, -10:]], 1), H.astype(np.float32)


def timed(fn, reps):
    """Median seconds and last result of ``fn`` over ``reps`` runs."""
    ts, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), out


def interleaved(fns: dict, reps: int) -> dict:
    times = {k: [] for k in fns}
    outs = {}
    for _ in range(reps):
        for k, fn in fns.items():
            gc.collect()  # PyHessian's backward(create_graph=True) leaves reference cycles
            t = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(v), outs[k]) for k, v in times.items()}


def row(name, seconds, products, err, note=""):
    e = f"{err:9.2e}" if err is not None else "        -"
    p = f"{products:6d}" if products is not None else "     -"
    print(f"  {name:<40} {seconds * 1e3:10.1f} ms {p} {e}  {note}")


def bench_hvp(obj, reps):
    print("\nHVP: one product (and 16 per pass), ms per product; graph build amortized")
    ops = {m: HessianOperator(obj, method=m) for m in ("graph", "double", "fwdrev", "vmap")}
    from pyhessian import hessian as pyh
    from pyhessian.utils import hessian_vector_product

    obj.model.zero_grad(set_to_none=True)
    ph = pyh(obj.model, nn.CrossEntropyLoss(),
             data=(obj.batches[0].inputs, obj.batches[0].targets), cuda=False)
    curv = _curvlinops(obj)
    results = {}
    for k in (1, 16):
        V = torch.randn(ops["graph"].dim, k)
        for op in ops.values():
            op.matmat(V)  # warm up, builds the cached graph
        fns = {f"lossatlas {m}": (lambda op=op, V=V: op.matmat(V)) for m, op in ops.items()}
        if k == 1:
            v = ops["graph"].split(V[:, 0])
            fns["pyhessian (cached graph)"] = lambda v=v: hessian_vector_product(
                ph.gradsH, ph.params, v)
            fns["curvlinops HessianLinearOperator"] = lambda V=V: curv @ V[:, 0]
        res = interleaved(fns, reps)
        for name, (sec, _) in res.items():
            results[(name, k)] = sec / k
    fastest = min(results[(n, 1)] for n, k in results if k == 1)
    for (name, k), sec in results.items():
        print(f"  {name + f' x{k}':<40} {sec * 1e3:8.2f} ms/product   "
              f"{sec / fastest:5.2f}x the fastest single product")
    return results


def _curvlinops(obj):
    from curvlinops import HessianLinearOperator

    model = obj.model
    params = [p for p in model.parameters() if p.requires_grad]
    data = [(b.inputs, b.targets) for b in obj.batches]
    return HessianLinearOperator(model, nn.CrossEntropyLoss(), params, data)


def bench_top(obj, w, reps):
    print("\nTop-1 eigenvalue (each includes its setup / graph build)")
    import sys

    from pyhessian import hessian as pyh

    phmod = sys.modules["pyhessian.hessian"]  # the package re-exports the class under that name

    count = {"n": 0}
    orig = phmod.hessian_vector_product

    def counting(*a):
        count["n"] += 1
        return orig(*a)

    phmod.hessian_vector_product = counting
    X, y = obj.batches[0].inputs, obj.batches[0].targets

    def ours():
        return eigs(obj, k=1, which="LA", tol=1e-3)

    def pyhessian():
        count["n"] = 0
        torch.manual_seed(0)
        obj.model.zero_grad(set_to_none=True)  # PyHessian accumulates create_graph grads
        return pyh(obj.model, nn.CrossEntropyLoss(), data=(X, y), cuda=False).eigenvalues(
            top_n=1)[0][0], count["n"]

    def curvlinops():
        A = _curvlinops(obj).to_scipy(np.float64)
        n = {"n": 0}
        mv = A.matvec

        def counted(x):
            n["n"] += 1
            return mv(x)

        from scipy.sparse.linalg import LinearOperator

        B = LinearOperator(A.shape, matvec=counted, dtype=np.float64)
        vals = eigsh(B, k=1, which="LA", v0=np.random.default_rng(0).standard_normal(A.shape[0]))[0]
        return vals[0], n["n"]

    def ours_power():
        return power(obj)

    res = interleaved({"ours": ours, "pyhessian": pyhessian, "curvlinops": curvlinops,
                       "power": ours_power}, reps)
    lmax = w[-1]
    sec, spec = res["ours"]
    t_ph = res["pyhessian"][0]
    row("lossatlas eigs LA (Lanczos, tol 1e-3)", sec, spec.matvecs,
        abs(spec.values[-1] - lmax) / lmax, f"{sec / t_ph:.2f}x PyHessian's time")
    val, n = res["pyhessian"][1]
    row("PyHessian eigenvalues (power, 1e-3)", t_ph, n, abs(val - lmax) / lmax)
    val, n = res["curvlinops"][1]
    row("curvlinops + eigsh (tol 0)", res["curvlinops"][0], n, abs(val - lmax) / lmax)
    sec, spec = res["power"]
    row("lossatlas power (PyHessian defaults)", sec, spec.matvecs,
        abs(spec.values[-1] - lmax) / lmax)
    phmod.hessian_vector_product = orig


def bench_sa(obj, w):
    print("\nFive most negative eigenpairs to tol 1e-3 (‖Hv−θv‖ ≤ 1e-3·|θ|); exact:",
          np.array2string(w[:6], precision=4))
    out = {}
    for name, kw in (("plain ARPACK eigsh SA (ncv 20)", dict(method="arpack")),
                     ("ARPACK eigsh SA, ncv 100", dict(method="arpack", ncv=100)),
                     ("lossatlas eigs SA (unrestarted Lanczos)", dict(method="lanczos"))):
        sec, spec = timed(lambda kw=kw: eigs(obj, k=5, which="SA", tol=1e-3, **kw), 1)
        err = np.max(np.abs(spec.values - w[:5]) / np.abs(w[:5]))
        rel = np.max(spec.residuals / np.abs(spec.values))
        row(name, sec, spec.matvecs, err, f"max ‖r‖/|θ| {rel:.1e}")
        out[name] = spec.matvecs
        out["_lmin"] = spec.values[0]
    sec, (vals, res, n) = timed(lambda: _shifted(obj, out["_lmin"]), 1)
    err = np.max(np.abs(vals - w[:5]) / np.abs(w[:5]))
    row("ARPACK LA on σI−H (σ=λ_max), tol rescaled", sec, n, err,
        f"max ‖r‖/|θ| {np.max(res / np.abs(vals)):.1e}")
    base = out["plain ARPACK eigsh SA (ncv 20)"]
    print(f"  lossatlas uses {out['lossatlas eigs SA (unrestarted Lanczos)'] / base:.2f}x "
          "plain ARPACK's products")


def _shifted(obj, lmin_guess):
    """Spectrum folding without inversion: eigsh LA on σI − H, σ ≈ λ_max, with ARPACK's tol
    rescaled so that ‖r‖ ≤ 1e-3·|λ_min| still holds (tol·(σ − λ) = 1e-3·|λ|)."""
    op = HessianOperator(obj)
    top = eigs(obj, k=1, which="LA", operator=op).values[-1]
    sigma = float(top)
    tol = 1e-3 * abs(lmin_guess) / (sigma - lmin_guess)
    A = op.scipy(shift=sigma, scale=-1.0)
    mu, V = eigsh(A, k=5, which="LA", tol=tol,
                  v0=np.random.default_rng(0).standard_normal(op.dim))
    vals = sigma - mu
    R = op.scipy().matmat(V) - V * vals
    order = np.argsort(vals)
    return vals[order], np.linalg.norm(R, axis=0)[order], op.matvecs


def bench_trace(H, w, seeds):
    print(f"\nTrace with 100 products (exact {w.sum():.6g}); relative error, median over "
          f"{seeds} seeds (on the dense exact H: the estimators' accuracy, not their speed)")
    Ht = torch.from_numpy(H).double()

    def mm(X):
        return Ht @ X

    true = float(w.sum())
    from curvlinops.trace.epperly2024xtrace import xtrace as cl_xtrace

    errs = {}
    for method in ("hutchinson", "hutch++", "xtrace"):
        runs = [trace_of(mm, H.shape[0], 100, method, seed=s) for s in range(seeds)]
        errs[f"lossatlas {method}" + (" (default)" if method == "xtrace" else "")] = (
            float(np.median([abs(v - true) / true for v, _, _ in runs])),
            float(np.median([e / true for _, e, _ in runs])))
    torch.manual_seed(0)
    e = [abs(float(cl_xtrace(Ht, 100)) - true) / true for _ in range(seeds)]
    errs["curvlinops xtrace (peer)"] = (float(np.median(e)), float("nan"))
    for k, (err, est) in errs.items():
        print(f"  {k:<40} {100 * err:7.3f} %   median reported error {100 * est:6.3f} %")


def bench_trace_time(obj, w, reps):
    sec, est = timed(lambda: la.hessian.trace_estimate(obj, 100), reps)
    row("lossatlas trace_estimate, 100 products", sec, est.products,
        abs(est.value - w.sum()) / w.sum(), "(on the real operator, seed 0)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--skip-sa", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("LOSSATLAS_QUIET", "1")
    model, X, y = workload()
    obj = la.Objective(model, (X, y))
    print(f"workload: {obj}, loss {obj.loss():.4g}, torch threads {torch.get_num_threads()}")
    w, _, H = exact(model, X, y)
    print(f"exact: λ_max {w[-1]:.6g}, λ_min {w[0]:.4g}, trace {w.sum():.6g}")
    bench_hvp(obj, args.reps)
    bench_top(obj, w, args.reps)
    if not args.skip_sa:
        bench_sa(obj, w)
    bench_trace(H, w, args.seeds)
    bench_trace_time(obj, w, args.reps)


if __name__ == "__main__":
    main()
