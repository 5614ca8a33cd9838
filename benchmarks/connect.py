"""Mode-connectivity and CKA benchmark: la.connect against Garipov-style curve layers, and
la.similarity.linear_cka against the paper's m×m centering-matrix formula.

Baseline: the architecture rewritten with curve layers, as dnn-mode-connectivity (Garipov et al.
2018) and Yang et al.'s scripts do it: every Linear holds k+1 weight/bias copies and builds
W(t) = Σ_j C(k,j)(1−t)^{k−j} t^j W_j in its forward. la.connect needs no rewrite: it runs the
unchanged model at γ(t) through ``torch.func.functional_call``. Both are trained here with the
same data order, the same t per batch, Garipov's schedule and ½·wd·‖γ(t)‖², so their bends must
agree to rounding; the table shows the time per epoch and the disagreement.

Workload: MLP 64-W-10 on all 1,797 digits (standardized), two seeds trained with the demo recipe
(SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, 30 epochs); the curve: one bend, batch 128, lr 0.05.

    .venv/bin/python benchmarks/connect.py [--reps 5] [--epochs 10] [--widths 128 512]

Timings are medians over interleaved repetitions (the cores are shared).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import lossatlas as la
from lossatlas.measurements.connect import bernstein, garipov_lr


# -- the baseline: curve layers (Garipov et al. 2018) -------------------------------------------
class CurveLinear(nn.Module):
    """A Linear layer with k+1 control copies; the ends are frozen, the bends train."""

    def __init__(self, ends: tuple[nn.Linear, nn.Linear], bends: int = 1):
        super().__init__()
        a, b = ends
        k = bends + 1
        ws, bs = [], []
        for j in range(k + 1):
            if j in (0, k):
                src = a if j == 0 else b
                ws.append(nn.Parameter(src.weight.detach().clone(), requires_grad=False))
                bs.append(nn.Parameter(src.bias.detach().clone(), requires_grad=False))
            else:  # on the line, computed as la.connect.initial_bends does: a + (j/k)(b - a)
                ws.append(nn.Parameter(a.weight.detach() + (j / k) * (b.weight.detach()
                                                                      - a.weight.detach())))
                bs.append(nn.Parameter(a.bias.detach() + (j / k) * (b.bias.detach()
                                                                    - a.bias.detach())))
        self.ws, self.bs = nn.ParameterList(ws), nn.ParameterList(bs)

    def weights(self, c: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        k = len(c) - 1  # the order la.connect uses: ends first, then the bends
        order = [0, k, *range(1, k)]
        w = sum(float(c[j]) * self.ws[j] for j in order)
        b = sum(float(c[j]) * self.bs[j] for j in order)
        return w, b


class CurveMLP(nn.Module):
    """An nn.Sequential of Linear / activation layers rewritten with :class:`CurveLinear`."""

    def __init__(self, model_a: nn.Sequential, model_b: nn.Sequential, bends: int = 1):
        super().__init__()
        self.k = bends + 1
        self.layers = nn.ModuleList(
            CurveLinear((la_, lb), bends) if isinstance(la_, nn.Linear) else la_
            for la_, lb in zip(model_a, model_b)
        )

    def forward(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Output at γ(t) and ‖γ(t)‖² (Garipov's l2 of the curve point)."""
        c = bernstein(self.k, t)
        l2 = 0.0
        for layer in self.layers:
            if isinstance(layer, CurveLinear):
                w, b = layer.weights(c)
                l2 = l2 + w.pow(2).sum() + b.pow(2).sum()
                x = nn.functional.linear(x, w, b)
            else:
                x = layer(x)
        return x, l2

    def bend(self, j: int = 1) -> list[torch.Tensor]:
        out = []
        for layer in self.layers:
            if isinstance(layer, CurveLinear):
                out += [layer.ws[j].detach(), layer.bs[j].detach()]
        return out


def train_curve_layers(curve: CurveMLP, X, y, epochs: int, lr: float = 0.05,
                       momentum: float = 0.9, weight_decay: float = 5e-4, batch_size: int = 128,
                       seed: int = 0) -> CurveMLP:
    """The curve-layer training loop with la.connect.train_curve's random stream."""
    params = [p for p in curve.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    n = len(y)
    gen = torch.Generator().manual_seed(seed)
    total = max(1, epochs * math.ceil(n / batch_size))
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, batch_size):
            idx = perm[s:s + batch_size]
            t = float(torch.rand((), generator=gen))
            for g in opt.param_groups:
                g["lr"] = garipov_lr(lr, step / total)
            out, l2 = curve(X[idx], t)
            loss = nn.functional.cross_entropy(out, y[idx]) + 0.5 * weight_decay * l2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return curve


# -- workload -------------------------------------------------------------------------------
def digits():
    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y)


def trained(width: int, seed: int, X, y) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(30):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 128):
            idx = perm[i:i + 128]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model


def _ours(obj, ma, mb, epochs):
    return la.connect.train_curve(obj, ma, mb, epochs=epochs, lr=0.05, points=2, linear=False,
                                  progress=False)


def bench_connect(width: int, epochs: int, reps: int, X, y) -> dict:
    ma, mb = trained(width, 0, X, y), trained(width, 1, X, y)
    obj = la.Objective(ma, (X, y), batch_size=512)
    times: dict[str, list[float]] = {"ours": [], "curve layers": []}
    res = curve = None
    for _ in range(reps):
        for name in (("ours", "curve layers") if _ % 2 == 0 else ("curve layers", "ours")):
            t0 = time.perf_counter()
            if name == "ours":
                res = _ours(obj, ma, mb, epochs)
            else:
                curve = train_curve_layers(CurveMLP(ma, mb), X, y, epochs)
                with torch.no_grad():  # the same two end evaluations
                    for t in (0.0, 1.0):
                        curve(X, t)
            times[name].append(time.perf_counter() - t0)
    ours = [v for v in res.control[1].values()]
    base = curve.bend(1)
    diff = max(float((a - b).abs().max()) for a, b in zip(ours, base))
    scale = max(float(a.abs().max()) for a in ours)
    with torch.no_grad():
        mid_base = float(nn.functional.cross_entropy(curve(X, 0.5)[0], y))
    mid_ours = obj.loss(res.point(0.5))
    med = {k: statistics.median(v) / epochs for k, v in times.items()}
    return {"width": width, **med, "rel_diff": diff / scale, "mid_ours": mid_ours,
            "mid_base": mid_base}


def bench_cka(m: int, reps: int) -> dict:
    g = torch.Generator().manual_seed(0)
    F1 = torch.softmax(torch.randn(m, 10, generator=g), -1)
    F2 = torch.softmax(F1 @ torch.randn(10, 10, generator=g), -1)

    def direct():
        X, Y = F1.double(), F2.double()
        H = torch.eye(m, dtype=torch.float64) - 1.0 / m
        def cov(A, B):
            return torch.trace(A @ A.T @ H @ B @ B.T @ H) / (m - 1) ** 2
        return float(cov(X, Y) / torch.sqrt(cov(X, X) * cov(Y, Y)))

    times: dict[str, list[float]] = {"ours": [], "direct": []}
    vals = {}
    for r in range(reps):
        for name, fn in ((("ours", lambda: la.similarity.linear_cka(F1, F2)), ("direct", direct))
                         if r % 2 == 0 else (("direct", direct),
                                             ("ours", lambda: la.similarity.linear_cka(F1, F2)))):
            t0 = time.perf_counter()
            vals[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {"m": m, **{k: statistics.median(v) for k, v in times.items()},
            "diff": abs(vals["ours"] - vals["direct"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--widths", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    X, y = digits()
    print(f"curve training, {args.epochs} epochs x 15 steps, medians of {args.reps} "
          f"(threads={args.threads})")
    print(f"{'width':>6} {'ours s/ep':>10} {'layers s/ep':>12} {'ratio':>7} "
          f"{'bend rel diff':>14} {'L(mid) ours':>12} {'L(mid) layers':>14}")
    for w in args.widths:
        r = bench_connect(w, args.epochs, args.reps, X, y)
        print(f"{w:>6} {r['ours']:>10.4f} {r['curve layers']:>12.4f} "
              f"{r['ours'] / r['curve layers']:>7.2f} {r['rel_diff']:>14.2e} "
              f"{r['mid_ours']:>12.5f} {r['mid_base']:>14.5f}")
    print("\nlinear CKA, 10 outputs: ours (d x d Gram) vs Eq. 3 with the m x m centering matrix")
    print(f"{'m':>6} {'ours s':>10} {'direct s':>10} {'speed-up':>9} {'|diff|':>9}")
    for m in (640, 2000):
        r = bench_cka(m, args.reps)
        print(f"{m:>6} {r['ours']:>10.5f} {r['direct']:>10.5f} {r['direct'] / r['ours']:>9.1f} "
              f"{r['diff']:>9.1e}")


if __name__ == "__main__":
    main()
