"""Surface speed: lossatlas vs the floor of plain forwards, loss-landscapes and an in-place loop.

For each workload a 2D surface θ + a·d₁ + b·d₂ on an n×n grid is computed by

* ``lossatlas``       ``la.surface`` (loss and accuracy; the affine first-layer trick where it
                      applies and pays, else the in-place engine),
* ``floor``           n² plain ``model(X)`` + cross-entropy at the center (no weight writes),
* ``loss-landscapes`` ``loss_landscapes.planar_interpolation`` over the same grid (loss only;
                      walks the grid with in-place adds),
* ``in-place loop``   for each point: write θ + a·d₁ + b·d₂ into the model, forward, loss.

Repetitions are interleaved (the order rotates every repetition) and medians reported.
``disagree`` is the largest relative difference of a method's losses from the in-place loop's
(lossatlas on the same grid; loss-landscapes on its own zigzag grid, re-indexed).

Usage: ``python benchmarks/landscape.py [--quick] [--reps 3] [--only digits,cifar,...]``
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import lossatlas as la

os.environ.setdefault("LOSSATLAS_QUIET", "1")


def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / (X.std(0) + 1e-8)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y)


def workloads(quick: bool):
    torch.manual_seed(0)
    X, y = digits()
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    Xc = torch.randn(1000, 3072)
    yc = torch.randint(0, 10, (1000,))
    cifar = nn.Sequential(nn.Linear(3072, 128), nn.ReLU(), nn.Linear(128, 10))
    Xi = X.reshape(-1, 1, 8, 8)
    cnn = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16, 10),
    )
    with torch.no_grad():  # realistic running statistics
        cnn.train()
        cnn(Xi)
        cnn.eval()
    def n(full: int, q: int) -> int:
        return q if quick else full

    return [
        ("digits MLP 64-128-10", mlp, X, y, "keep", n(51, 21)),
        ("CIFAR-shaped MLP 3072-128-10 (1000)", cifar, Xc, yc, "keep", n(31, 11)),
        ("BN CNN on digits 1x8x8", cnn, Xi, y, "keep", n(31, 11)),
        ("BN CNN, bn=recalibrate", cnn, Xi, y, "recalibrate", n(21, 7)),
    ]


def floor(model, X, y, n_points, recal):
    with torch.no_grad():
        for _ in range(n_points):
            float(F.cross_entropy(model(X), y))


def inplace_loop(model, X, y, theta, d1, d2, xs, ys):
    m = copy.deepcopy(model).eval()
    params = dict(m.named_parameters())
    out = np.zeros((len(xs), len(ys)))
    with torch.no_grad():
        for i, a in enumerate(xs):
            for j, b in enumerate(ys):
                for k, p in params.items():
                    p.copy_(theta[k] + a * d1[k] + b * d2[k])
                out[i, j] = float(F.cross_entropy(m(X), y))
    return out


def loss_landscapes_plane(model, X, y, theta, d1, d2, n):
    """planar_interpolation from θ − d₁ − d₂ with steps 2d/(n−1). The library walks the grid
    in a zigzag with in-place adds: on even rows its column j is at y index j + 1, on odd rows
    at y index j. Returned re-indexed to our grid (NaN where it has no point)."""
    import loss_landscapes
    from loss_landscapes.metrics import Loss

    step = n / (n - 1)
    start, end1, end2 = (copy.deepcopy(model).eval() for _ in range(3))
    with torch.no_grad():
        for k, p in start.named_parameters():
            p.copy_(theta[k] - d1[k] - d2[k])
        for k, p in end1.named_parameters():
            p.copy_(theta[k] - d1[k] - d2[k] + 2 * step * d1[k])
        for k, p in end2.named_parameters():
            p.copy_(theta[k] - d1[k] - d2[k] + 2 * step * d2[k])
    metric = Loss(F.cross_entropy, X, y)
    with torch.no_grad():
        raw = np.asarray(loss_landscapes.planar_interpolation(start, end1, end2, metric, steps=n))
    out = np.full((n, n), np.nan)
    out[0::2, 1:] = raw[0::2, :-1]
    out[1::2, :] = raw[1::2, :]
    return out


def bench(name, model, X, y, bn, n, reps):
    model.eval()
    obj = la.Objective(model, (X, y), bn=bn)
    d1 = la.directions.gaussian(model, seed=0)
    d2 = la.directions.gaussian(model, seed=1)
    theta = la.params.of(model)
    xs = np.linspace(-1, 1, n)
    times: dict[str, list[float]] = {}
    values: dict[str, np.ndarray] = {}
    methods = {
        "lossatlas": lambda: la.surface(obj, d1, d2, resolution=n, progress=False),
        "floor": lambda: floor(model, X, y, n * n, bn == "recalibrate"),
    }
    if bn == "keep":
        methods["loss-landscapes"] = lambda: loss_landscapes_plane(model, X, y, theta, d1, d2, n)
        methods["in-place loop"] = lambda: inplace_loop(model, X, y, theta, d1, d2, xs, xs)
    order = list(methods)
    for rep in range(reps):
        # rotate the order every repetition: no method always runs first or after another
        for key in order[rep % len(order):] + order[:rep % len(order)]:
            fn = methods[key]
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = fn()
            times.setdefault(key, []).append(time.perf_counter() - t)
            values[key] = out
    med = {k: statistics.median(v) for k, v in times.items()}
    surf = values["lossatlas"]
    ref = values.get("in-place loop")
    dis = {}
    if ref is not None:
        dis["lossatlas"] = float(np.max(np.abs(surf.loss - ref) / np.abs(ref)))
        ll = values["loss-landscapes"]
        dis["loss-landscapes"] = float(np.nanmax(np.abs(ll - ref) / np.abs(ref)))
    return med, dis, surf.meta.get("engine")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller grids")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated substrings of workload names")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, reps={args.reps} "
          "(medians; repetitions interleaved)")
    head = (f"{'workload':38s} {'grid':>6s} {'engine':>8s} {'ours s':>8s} {'floor s':>8s} "
            f"{'l-l s':>8s} {'loop s':>8s} {'ours/floor':>10s} {'l-l/ours':>9s} "
            f"{'loop/ours':>9s} {'disagree ours':>13s} {'l-l':>8s}")
    print(head)
    for name, model, X, y, bn, n in workloads(args.quick):
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        med, dis, engine = bench(name, model, X, y, bn, n, args.reps)
        ll, lp = med.get("loss-landscapes", np.nan), med.get("in-place loop", np.nan)
        print(f"{name:38s} {n:>3d}x{n:<2d} {engine!s:>8s} {med['lossatlas']:8.3f} "
              f"{med['floor']:8.3f} {ll:8.3f} {lp:8.3f} {med['lossatlas'] / med['floor']:10.2f} "
              f"{ll / med['lossatlas']:9.2f} {lp / med['lossatlas']:9.2f} "
              f"{dis.get('lossatlas', np.nan):13.1e} {dis.get('loss-landscapes', np.nan):8.1e}",
              flush=True)


if __name__ == "__main__":
    main()
