"""Scale: lossatlas on CIFAR ResNets (and the digits MLP for contrast), time and peak memory.

Models: ``resnet20`` (272k parameters) and ``resnet56`` (856k) of the zoo at their seeded
initialization, BatchNorm running statistics set by one train-mode pass; data: **random
tensors shaped 3×32×32** with random labels among 10 (CIFAR-shaped; no CIFAR download here),
2,000 images by default. The digits MLP (64-128-10) on all 1,797 digits is the contrast.

Each measurement runs in a fresh subprocess, so its **peak memory** is its own: the growth of
the resident set (``ru_maxrss``) over the process's size just before the measurement (model
and data built). Rows:

* ``surface keep`` / ``surface recal`` (/ ``surface inplace``: keep, in-place engine, no
  race): seconds per grid point of ``la.surface``'s engine
  (build, race of the affine and in-place engines on the first points, the rest) with the
  setup (private copy, probes, first-layer outputs) shown apart, over the floor: one plain
  ``model(X)`` + cross-entropy for ``keep``; for ``recal`` both that forward (the issue's
  ratio) and the two passes recalibration needs (a train-mode pass for the statistics + the
  evaluation).
* ``hvp <method>``: seconds per Hessian-vector product over all the data (the operator's own
  batches) ÷ one forward+backward over the same batches; ``pyhessian`` is PyHessian's
  ``dataloader_hv_product`` over the same batches; ``auto`` (on 2,000 images even with
  ``--quick``) is what the default budget chooses for the default ``Objective``, and its peak.
* ``top-1``: λ_max with the default ``Objective`` (no batch size given): products, seconds,
  peak; ``top-1 pyhessian``: PyHessian's power iteration (tol 1e-3) on the same batches.
* ``SA-3``: the three smallest eigenpairs within a memory budget (4GB; ``--quick``: the
  ``sa3`` entry of :data:`QUICK`) with their largest relative residual, the HVP operator being
  the one ``eigs`` builds by default; ``--sa-basis`` caps the basis (fewer vectors force the
  thick restart).
* ``trace``: Hutchinson with 100 products; ``pca``: ``la.trajectory.pca`` of 50 checkpoints.
* ``basis``: 300 Lanczos steps (thick-restart code, no restart) on a diagonal H of the model's
  size: the peak over the basis's own bytes (the basis is allocated once; it was grown by
  concatenation before, which held two copies while growing).

``sa3 plan`` shows what SA-3 of the model on 256 images would hold in the budget (the HVP
method, its batches, the basis) without running it. ``--quick`` uses fewer images per row
(:data:`QUICK`), 9 grid points, 30 trace products and a small SA-3 problem whose budget forces
the restarted Lanczos. Timings on a shared machine are noisy: ours and the floors are timed
interleaved within one subprocess and the fastest of each kept.

Usage: ``python benchmarks/scale.py [--quick] [--only resnet20,mlp] [--rows surface,hvp,...]``
(``--rows surface-keep,surface-inplace --points 49``: the keep row alone on a 7×7 grid, with
the engine the race keeps and with the in-place engine forced, each with the medians and the
quartiles of each point's time over the floor timed beside it)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("LOSSATLAS_QUIET", "1")

ROWS = ("surface", "hvp", "top1", "sa3", "trace", "pca", "basis")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- the workloads ------------------------------------------------------------------------
def workload(name: str, n: int):
    import torch

    import lossatlas as la

    torch.manual_seed(0)
    if name == "mlp":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = torch.tensor((X - X.mean(0)) / (X.std(0) + 1e-8), dtype=torch.float32)
        y = torch.tensor(y)
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(),
                                    torch.nn.Linear(128, 10))
        return model, X, y
    model = la.zoo.build(name, input_shape=(3, 32, 32), num_classes=10, seed=0)
    X, y = torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))
    with torch.no_grad():  # realistic running statistics
        model.train()
        for i in range(0, n, 256):
            model(X[i:i + 256])
    model.eval()
    return model, X, y


def _best(fn, reps: int = 2, least: float = 0.5) -> float:
    """The fastest of at least ``reps`` runs, more while they took under ``least`` s in all."""
    ts: list[float] = []
    while len(ts) < reps or (sum(ts) < least and len(ts) < 200):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


# -- one measurement (runs in its own process) ---------------------------------------------
def measure(row: str, name: str, n: int, points: int, sa_budget: str,
            products: int = 100, max_basis: int = 1000) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    import lossatlas as la
    from lossatlas.measurements.landscape import engine

    torch.set_num_threads(1)
    model, X, y = workload(name, n)
    out: dict = {"row": row, "model": name, "n": len(X),
                 "params": sum(p.numel() for p in model.parameters())}
    base = _rss()

    if row.startswith("surface"):
        bn = "recalibrate" if row.endswith("recal") else "keep"
        obj = la.Objective(model, (X, y), bn=bn)
        d1, d2 = (la.directions.gaussian(model, norm="filter", seed=s) for s in (0, 1))
        side = max(2, round((points * (16 if name == "mlp" else 1)) ** 0.5))
        grid = np.array([[a, b] for a in np.linspace(-1, 1, side)
                         for b in np.linspace(-1, 1, side)])
        saved = {k: v.clone() for k, v in model.state_dict().items()}

        def fwd():
            with torch.no_grad():
                float(F.cross_entropy(model(X), y))

        def two_passes():
            with torch.no_grad():
                model.train()
                model(X)
                model.eval()
                float(F.cross_entropy(model(X), y))

        t0 = time.perf_counter()
        eng = engine.Engine.build(obj, obj.center, [d1, d2], fast=not row.endswith("inplace"))
        raced = engine.race_engines(eng, grid)
        setup = time.perf_counter() - t0  # the race's points are real, counted here too
        rest = grid[len(raced[0]):] if raced is not None else grid
        ours, floor, floor2 = [], [], []
        for c in rest:  # interleaved with the floors: the same load on each
            t0 = time.perf_counter()
            eng.evaluate(c[None])
            ours.append(time.perf_counter() - t0)
            floor.append(_best(fwd, 1, 0))
            if bn == "recalibrate":
                floor2.append(_best(two_passes, 1, 0))
        model.load_state_dict(saved)
        per_point, fl = min(ours), min(floor)
        fl2 = min(floor2) if floor2 else fl
        paired = np.array(ours) / np.array(floor)  # each point over the floor timed beside it
        out.update(engine=eng.mode, reason=eng.reason, setup_s=setup, per_point_s=per_point,
                   floor_s=fl, floor2_s=fl2, ratio=per_point / fl, ratio2=per_point / fl2,
                   points=len(grid), timed=len(rest), median_s=float(np.median(ours)),
                   floor_median_s=float(np.median(floor)),
                   paired=[float(q) for q in np.percentile(paired, [25, 50, 75])],
                   peak=_peak() - base)
        return out

    if row.startswith("hvp"):
        method = row.split()[1]
        obj = la.Objective(model, (X, y))
        if method == "pyhessian":
            op = la.hessian.HessianOperator(obj, method="double")
            out["peak"] = _peak() - base
            from pyhessian import hessian

            batches = [(b.inputs, b.targets) for b in op.batches]
            h = hessian(model, torch.nn.CrossEntropyLoss(), dataloader=batches, cuda=False)
            v = [torch.randn_like(p) for p in h.params]
            base = _rss()

            def product():
                h.dataloader_hv_product(v)
        else:
            op = la.hessian.HessianOperator(obj, method=method)
            v = torch.randn(op.dim)
            op.matvec(v)  # graph: builds the cache (setup)

            def product():
                op.matvec(v)
        leaves = [p for p in model.parameters()]

        def fwd_bwd():
            for b in op.batches:
                loss = F.cross_entropy(model(b.inputs), b.targets)
                torch.autograd.grad(loss, leaves)

        per, fb = [], []
        for _ in range(1 if method == "auto" else 3):  # interleaved: the same load on each
            per.append(_best(product, 1, 0.2))
            out["peak"] = max(out.get("peak", 0), _peak() - base)  # before the baseline's graph
            fb.append(_best(fwd_bwd, 1, 0.2))
        per, fb = min(per), min(fb)
        out.update(method=method, per_product_s=per, fwd_bwd_s=fb, ratio=per / fb,
                   budget=getattr(op, "budget", 0),
                   batches=len(op.batches), batch=max(op.batch_samples),
                   chosen=op.method, reason=getattr(op, "reason", ""))
        return out

    if row == "top1":
        obj = la.Objective(model, (X, y))  # the default: no batch size given
        t0 = time.perf_counter()
        spec = la.hessian.eigs(obj, k=1, which="LA")
        out.update(value=spec.top, products=spec.matvecs, seconds=time.perf_counter() - t0,
                   residual=float(spec.residuals[0] / abs(spec.top)), peak=_peak() - base)
        return out

    if row == "top1 pyhessian":
        obj = la.Objective(model, (X, y))
        op = la.hessian.HessianOperator(obj, method="double")  # the same batches as ours
        from pyhessian import hessian

        batches = [(b.inputs, b.targets) for b in op.batches]
        del op, obj
        base = _rss()
        h = hessian(model, torch.nn.CrossEntropyLoss(), dataloader=batches, cuda=False)
        calls = [0]
        inner = h.dataloader_hv_product

        def counted(v):
            calls[0] += 1
            return inner(v)

        h.dataloader_hv_product = counted
        torch.manual_seed(0)
        t0 = time.perf_counter()
        vals, _ = h.eigenvalues(maxIter=100, tol=1e-3, top_n=1)
        out.update(value=float(vals[0]), products=calls[0], seconds=time.perf_counter() - t0,
                   peak=_peak() - base)
        return out

    if row == "sa3":
        obj = la.Objective(model, (X, y))
        t0 = time.perf_counter()
        with la.memory.limit(sa_budget):
            op = _sa_operator(la, obj, model)  # what eigs(obj, 3, "SA") builds by default
            from lossatlas.measurements.hessian.eigenpairs import basis_vectors

            basis = basis_vectors(op, 3, max_basis)
            spec = la.hessian.eigs(obj, k=3, which="SA", operator=op, max_basis=max_basis)
        rel = np.max(spec.residuals / np.abs(spec.values))
        out.update(values=[float(v) for v in spec.values], products=spec.matvecs,
                   seconds=time.perf_counter() - t0, rel_residual=float(rel), basis=basis,
                   batches=len(op.batches), batch=max(op.batch_samples),
                   hvp=op.method, budget=sa_budget, peak=_peak() - base)
        return out

    if row == "basis":  # the Lanczos basis alone: 300 steps on a diagonal H of the model's size
        from lossatlas.measurements.hessian.lanczos import thick_restart

        dim = out["params"]
        diag = torch.linspace(-1, 2, dim, dtype=torch.float64)
        del model, X, y
        base = _rss()
        t0 = time.perf_counter()
        run = thick_restart(lambda q: diag * q, torch.ones(dim, dtype=torch.float64), 3, "SA",
                            300, lambda th, r: r < 0, 300)
        out.update(steps=run.products, seconds=time.perf_counter() - t0,
                   basis_bytes=300 * 8 * dim, peak=_peak() - base)
        out["ratio"] = out["peak"] / out["basis_bytes"]
        return out

    if row == "sa3 plan":  # what SA-3 would hold, without running it
        obj = la.Objective(model, (X, y))
        from lossatlas.measurements.hessian.eigenpairs import basis_vectors

        with la.memory.limit(sa_budget):
            op = _sa_operator(la, obj, model)
            basis = basis_vectors(op, 3, max_basis)
        out.update(hvp=op.method, hvp_bytes=op.bytes, basis=basis,
                   basis_bytes=basis * 8 * op.dim, batches=len(op.batches),
                   batch=max(op.batch_samples), budget=sa_budget, peak=_peak() - base)
        return out

    if row == "trace":
        obj = la.Objective(model, (X, y))
        t0 = time.perf_counter()
        est = la.hessian.trace_estimate(obj, products)
        out.update(value=float(est.value), products=est.products,
                   seconds=time.perf_counter() - t0, peak=_peak() - base)
        return out

    if row == "pca":
        theta = la.params.of(model)
        g = torch.Generator().manual_seed(0)
        ckpts = []
        walk = theta
        for _ in range(50):
            walk = walk + la.params.Point({k: 0.01 * torch.randn(v.shape, generator=g)
                                          for k, v in theta.items()})
            ckpts.append(walk)
        base = _rss()
        t0 = time.perf_counter()
        plane = la.trajectory.pca(ckpts, method="li2018", progress=False)
        out.update(seconds=time.perf_counter() - t0,
                   evr=[float(v) for v in plane.explained_variance_ratio],
                   peak=_peak() - base)
        return out
    raise ValueError(row)


def _sa_operator(la, obj, model):
    """The HVP operator ``la.hessian.eigs(obj, k=3)`` builds when given none: room kept
    beside the products for 32 (at least 14) basis vectors + the 3 Ritz and 2 work vectors."""
    vec = 8 * sum(p.numel() for p in model.parameters())
    return la.hessian.HessianOperator(obj, reserve=(32 + 5) * vec, reserve_min=(14 + 5) * vec)


# -- the driver ---------------------------------------------------------------------------
def run_one(row, name, n, points, sa_budget, timeout, products=100, max_basis=1000) -> dict:
    cmd = [sys.executable, __file__, "--one", row, name, str(n), str(points), sa_budget,
           str(products), str(max_basis)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    except subprocess.TimeoutExpired:
        return {"row": row, "model": name, "error": f"over {timeout} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"row": row, "model": name, "error": tail[:300]}
    return json.loads(lines[-1])


#: --quick: images per (model, row group) and the SA-3 problem, sized for a loaded 2-core CPU
QUICK = {
    "resnet20": {"surface": 256, "hvp": 128, "top1": 128, "trace": 64, "sa3": (32, "400MB")},
    "resnet56": {"surface": 128, "hvp": 64, "top1": 64, "trace": 32, "sa3": (16, "600MB")},
}


def mb(x) -> str:
    return f"{x / 1e6:,.0f} MB"


def describe(r: dict) -> str:
    if "error" in r:
        return f"not measured: {r['error']}"
    row = r["row"]
    if row.startswith("surface"):
        s = (f"{r['per_point_s']:.3f} s/point ({r['points']} points, fastest), {r['ratio']:.2f} "
             "x plain forward")
        if row.endswith("recal"):
            s += f", {r['ratio2']:.2f} x train pass + eval pass"
        if "paired" in r:
            q1, q2, q3 = r["paired"]
            s += (f"; medians {r['median_s']:.3f} vs {r['floor_median_s']:.3f} s, paired ratio "
                  f"median {q2:.3f} (quartiles {q1:.3f}-{q3:.3f}, {r['timed']} points)")
        return s + f"; setup {r['setup_s']:.2f} s apart; engine {r['engine']} ({r['reason']})"
    if row.startswith("hvp"):
        s = (f"{r['per_product_s']:.3f} s/product = {r['ratio']:.2f} x fwd+bwd "
             f"({r['fwd_bwd_s']:.3f} s; {r['batches']} batches of <= {r['batch']})")
        if r["method"] == "auto":
            s += f"; chose {r['chosen']} in the default budget {mb(r['budget'])}: {r['reason']}"
        return s
    if row.startswith("top1"):
        return f"lambda_max {r['value']:.4g}: {r['products']} products, {r['seconds']:.1f} s"
    if row == "basis":
        return (f"Lanczos basis of 300 vectors ({mb(r['basis_bytes'])}): peak {r['ratio']:.2f} x "
                f"the basis, {r['seconds']:.1f} s for 300 steps (diagonal H)")
    if row == "sa3 plan":
        return (f"plan only (not run): hvp {r['hvp']} in {r['batches']} batches of <= "
                f"{r['batch']} ({mb(r['hvp_bytes'])}), Lanczos basis {r['basis']} vectors "
                f"({mb(r['basis_bytes'])}) in {r['budget']}")
    if row == "sa3":
        return (f"{r['products']} products, {r['seconds']:.0f} s, basis {r['basis']} vectors in "
                f"{r['budget']} (hvp {r['hvp']} in {r['batches']} batches of <= {r['batch']}), "
                f"max rel. residual {r['rel_residual']:.1e}")
    if row == "trace":
        return f"{r['value']:.4g}: {r['products']} products, {r['seconds']:.1f} s"
    if row == "pca":
        evr = ", ".join(f"{v:.3f}" for v in r["evr"])
        return f"{r['seconds']:.2f} s (explained variance {evr})"
    return str(r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and points")
    ap.add_argument("--only", default="mlp,resnet20,resnet56")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--images", type=int, default=None, help="CIFAR-shaped images (2000)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    ap.add_argument("--points", type=int, default=None,
                    help="surface grid points (25; --quick: 9), the first 4 raced")
    ap.add_argument("--sa-basis", type=int, default=1000,
                    help="SA-3's max_basis (fewer forces the thick restart)")
    ap.add_argument("--one", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        row, name, n, points, budget, products, basis = args.one
        print(json.dumps(measure(row, name, int(n), int(points), budget, int(products),
                                 int(basis))))
        return
    rows = args.rows.split(",")
    n = args.images or (256 if args.quick else 2000)
    points = args.points or (9 if args.quick else 25)
    print(f"scale benchmark: {n} random CIFAR-shaped images (3x32x32; digits MLP: 1,797 "
          f"digits), 1 torch thread per measurement, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at start (the machine is shared: timings are noisy)")
    for name in args.only.split(","):
        sizes = QUICK.get(name, {}) if args.quick else {}
        plan = []
        if "surface" in rows or "surface-keep" in rows:
            plan += ["surface keep"] + (["surface recal"] if "surface" in rows else [])
        if "surface-inplace" in rows:
            plan += ["surface inplace"]
        if "hvp" in rows:
            plan += ["hvp auto", "hvp graph", "hvp double", "hvp fwdrev", "hvp pyhessian"]
        if "top1" in rows:
            plan += ["top1", "top1 pyhessian"]
        if "sa3" in rows and name != "mlp":
            plan += ["sa3 plan", "sa3"]
        plan += [r for r in ("trace", "pca", "basis") if r in rows]
        for row in plan:
            group = row.split()[0]
            size, budget = sizes.get(group, n), "4GB"
            if row == "sa3":
                size, budget = sizes.get("sa3", (256, "4GB"))
            if row == "sa3 plan":
                size = 256
            if row == "hvp auto":  # the default Objective on the full data: the plan's peak
                size = n if not args.quick else 2000
            products = 30 if args.quick else 100
            r = run_one(row, name, size, points, budget, args.timeout, products, args.sa_basis)
            peak = f"peak +{mb(r['peak'])}" if "peak" in r else ""
            print(f"{name:9s} {r.get('n', size):>5} {row:15s} {peak:>16s}  {describe(r)}",
                  flush=True)


if __name__ == "__main__":
    main()
