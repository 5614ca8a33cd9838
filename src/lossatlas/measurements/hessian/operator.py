"""Hessian-vector products of the full-data mean loss over a parameter subset.

``H = ∇²L(θ)`` with ``L(θ) = Σ_b (n_b/N) L_b(θ)``: the exact mean over all the data (weighted by
the number of targets in each batch, so a batch size that does not divide N changes nothing),
BatchNorm in eval mode (the Objective's BN policy decides which statistics), restricted to the
parameters ``params`` (names or glob patterns over ``obj.names``; the others are held fixed at
the point, which gives the diagonal block ``H[block, block]``).

Products are taken on flat vectors: ``V`` of shape ``(dim, k)``, ``dim`` the number of scalars
in the block, one data pass for all ``k`` columns. Four ways to compute them (``method=``):

* ``"graph"``: the first product builds ``g_b = ∇L_b`` with ``create_graph=True`` for every
  batch and keeps these graphs; each product is then one backward ``∂(g_b · v)/∂θ`` through them
  (PyHessian's single-batch trick, extended to every batch). The fastest when memory allows.
* ``"double"``: a fresh double backward per data pass (the graph is rebuilt for every call).
* ``"fwdrev"``: ``torch.func.jvp(torch.func.grad(L_b), θ, v)`` (forward-over-reverse).
* ``"vmap"``: forward-over-reverse vmapped over the ``k`` columns.

``method="auto"`` picks the fastest exact way that fits the memory budget
(:mod:`lossatlas.core.memory`): the cost of one kept graph is measured on two probe batches
(``fixed + per_sample · n`` bytes), the data is split into batches whose graph stays under
:data:`HVP_BATCH_BYTES` and the budget (so the time per product stays linear in N, and one
batch never holds the whole data set's graph), and ``"graph"`` is taken when the graphs of all
batches fit beside ``reserve`` (what the caller keeps besides, e.g. a Lanczos basis); otherwise
one product of ``"double"`` and of ``"fwdrev"`` is timed on the first batch and the faster kept.
For several vectors per pass it measures that way against ``"vmap"`` on the first two such
calls and keeps the faster (see :meth:`HessianOperator._way`). When not even one sample's
graph fits, one sentence says how much is needed.

benchmarks/hessian.py measures all four side by side on the digits MLP, benchmarks/scale.py
on CIFAR ResNets (numbers in benchmarks/README.md).
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch.func import grad as func_grad
from torch.func import jvp, vmap

from lossatlas.core import memory as M
from lossatlas.core import params as P
from lossatlas.core.batching import Batch, length_of, slice_batch, target_count
from lossatlas.core.errors import LossAtlasError

__all__ = ["HVP_BATCH_BYTES", "METHODS", "HessianOperator", "hvp", "resolve_params"]

METHODS = ("auto", "graph", "double", "fwdrev", "vmap")
HVP_BATCH_BYTES = 2**30  # the kept graph of one data batch is held under this size


def resolve_params(obj, params: str | Sequence[str] | None) -> list[str]:
    """The block: ``obj.names`` filtered by ``params`` (exact names or glob patterns such as
    ``"net.0.*"``), in model order; all of ``obj.names`` when None."""
    if params is None:
        return list(obj.names)
    pats = [params] if isinstance(params, str) else list(params)
    names = [n for n in obj.names if any(n == p or fnmatch.fnmatchcase(n, p) for p in pats)]
    if not names:
        raise LossAtlasError(
            f"params={params!r} matches none of the objective's parameters "
            f"({list(obj.names)[:4]}...); pass names or glob patterns such as 'layer1.*'"
        )
    return names


class HessianOperator:
    """The Hessian (block) of ``obj`` at ``point`` as a linear operator on flat vectors.

    ``op.matmat(V)`` with ``V`` a ``(dim, k)`` tensor returns ``H V`` (same dtype as ``V``);
    ``op.matvecs`` counts the products taken (columns). ``op.to_point(x)`` turns a flat vector
    into a Point over all of ``obj.names`` (zeros outside the block), usable as a direction.

    ``memory``: the budget (bytes or ``"4GB"``; default :func:`lossatlas.core.memory.budget`);
    ``reserve``: bytes the caller would like to keep besides the products (the kept graphs
    are chosen only when they fit beside it); ``reserve_min``: bytes it cannot do without
    (default ``reserve``; a batch's graph must fit beside it); ``cache_batches``: keep graphs
    only for at most this many batches (None: as many as the budget holds).
    ``op.batches`` / ``op.weights`` are the data batches the products run over (the
    objective's, split where one would hold too large a graph), ``op.graph_cost`` the measured
    :class:`~lossatlas.core.memory.LinearCost` of one batch's graph, ``op.bytes`` what the chosen
    method holds at most, ``op.reason`` why it was chosen.
    """

    def __init__(
        self,
        obj,
        point: Mapping[str, torch.Tensor] | None = None,
        params: str | Sequence[str] | None = None,
        method: str = "auto",
        cache_batches: int | None = None,
        *,
        memory: str | float | None = None,
        reserve: float = 0.0,
        reserve_min: float | None = None,
    ):
        if method not in METHODS:
            raise LossAtlasError(f"method={method!r} is unknown; use one of {METHODS}")
        self.obj = obj
        self.point = P.Point({k: v.detach() for k, v in
                              (obj.center if point is None else point).items()})
        if self.point.keys() != obj.center.keys():
            raise LossAtlasError(
                "point covers other parameters than the objective; build it with "
                "la.params.of(model) using the same selection (obj.names)"
            )
        self.names = resolve_params(obj, params)
        self.shapes = [tuple(self.point[k].shape) for k in self.names]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.dim = int(sum(self.sizes))
        self.dtype = self.point[self.names[0]].dtype
        self.device = self.point[self.names[0]].device
        self.auto = method == "auto"
        self._multi: dict[str, float] = {}  # auto: seconds per product with k > 1, by way
        self.buffers = obj.buffers_at(self.point)
        self.matvecs = 0
        self._graphs: list[tuple[float, tuple[torch.Tensor, ...]]] | None = None
        self._leaves: list[torch.Tensor] | None = None
        self._grad: torch.Tensor | None = None
        self.budget = M.budget(memory, self.device)
        least = float(reserve if reserve_min is None else min(reserve, reserve_min))
        spend = M.usable(self.budget)
        self.method = self._plan(method, spend - least, spend - float(reserve), cache_batches)

    # -- the memory plan -----------------------------------------------------------------
    def _probe_graph(self, n: int) -> int:
        """Bytes autograd saves for ``∇L_b`` with ``create_graph=True`` on ``n`` samples."""
        b = self.obj.batches[0]
        tgt = slice_batch(b.targets, 0, n) if b.targets is not None else None
        sub = Batch(slice_batch(b.inputs, 0, n), tgt, float(n))
        leaves = [self.point[k].detach().clone().requires_grad_(True) for k in self.names]
        nbytes, _ = M.saved_bytes(lambda: torch.autograd.grad(
            self._batch_loss(leaves, sub), leaves, create_graph=True, materialize_grads=True))
        return nbytes + self.dim * self.point[self.names[0]].element_size()

    def _measure_graph_cost(self) -> M.LinearCost:
        n = length_of(self.obj.batches[0].inputs)
        n2 = min(n, 8)
        n1 = max(1, n2 // 2)
        b2 = self._probe_graph(n2)
        b1 = self._probe_graph(n1) if n1 < n2 else b2
        return M.LinearCost.fit(n1, b1, n2, b2)

    def _split(self, cap: int) -> None:
        """``self.batches``: the objective's batches cut to at most ``cap`` samples, each
        weighted by its share of the targets (the exact mean whatever the cut)."""
        batches = []
        for b in self.obj.batches:
            n = length_of(b.inputs)
            if n <= cap:
                batches.append(b)
                continue
            step = -(-n // -(-n // cap))  # as even as the cap allows: 256 at cap 244 -> 2 x 128
            for i in range(0, n, step):
                j = min(i + step, n)
                tgt = slice_batch(b.targets, i, j) if b.targets is not None else None
                sub = Batch(slice_batch(b.inputs, i, j), tgt, target_count(tgt, j - i))
                if sub.weight > 0:  # a slice whose targets are all ignored adds nothing
                    batches.append(sub)
        self.batches = batches
        self.weights = [b.weight / self.obj.n for b in batches]
        self.batch_samples = [length_of(b.inputs) for b in batches]

    def _plan(self, method: str, avail: float, avail_graph: float,
              cache_batches: int | None) -> str:
        """Split the data and choose the way (see the module docstring)."""
        cost = self.graph_cost = self._measure_graph_cost()
        # a product through a batch's graph briefly holds about its saved bytes again (the
        # gradients of the activations): 1 + 1/SLACK times the kept cost, measured on resnet20
        peak = 1 + 1 / M.SLACK
        at_peak = M.LinearCost(cost.fixed * peak, cost.per_sample * peak)
        cap = max(at_peak.samples_within(min(HVP_BATCH_BYTES, avail)),
                  min(1, at_peak.samples_within(avail)))  # the speed cap never forbids one
        if cap < 1:
            raise M.too_large(
                f"a Hessian-vector product over {self.dim:,} parameters (one sample's graph)",
                (at_peak(1) + max(0.0, M.usable(self.budget) - avail)) / (1 - M.HEADROOM),
                self.budget,
                "pass params= a subset of the parameters (such as params='layer3.*')")
        self._split(cap)
        biggest = max(cost(n) for n in self.batch_samples)
        one = peak * biggest
        cached = sum(cost(n) for n in self.batch_samples) + biggest / M.SLACK
        fits = cached <= avail_graph and (cache_batches is None
                                          or len(self.batches) <= cache_batches)
        if method == "graph" and cached > avail:
            raise M.too_large(
                f"method='graph' (kept graphs of {self.obj.num_samples:,} samples)",
                (cached + max(0.0, M.usable(self.budget) - avail)) / (1 - M.HEADROOM),
                self.budget,
                "pass method='auto' or 'double' (one batch's graph at a time), fewer samples")
        if method != "auto":
            self.reason = f"method={method!r} asked"
        elif fits:
            method = "graph"
            self.reason = f"kept graphs of all batches fit ({M.fmt(cached)})"
        else:
            method = self._faster_single(one, avail)
        self.bytes = cached if method == "graph" else one * (2 if method in ("fwdrev",
                                                                               "vmap") else 1)
        return method

    def _faster_single(self, one: float, avail: float) -> str:
        """``"double"`` or ``"fwdrev"``: one product of each timed on the first batch (fwdrev
        carries tangents beside the activations: tried only when twice a graph fits)."""
        if 2 * one > avail:
            self.reason = "kept graphs exceed the budget; fwdrev would too"
            return "double"
        rows = torch.randn(1, self.dim, generator=torch.Generator().manual_seed(0)).to(
            self.device, self.dtype)
        first = self.batches[:1], self.weights[:1]
        times = {}
        for way in ("double", "fwdrev"):
            out = torch.zeros_like(rows)
            t0 = time.perf_counter()
            getattr(self, f"_mm_{way}")(rows, out, *first)
            times[way] = time.perf_counter() - t0
        best = min(times, key=times.get)
        self.reason = (f"kept graphs exceed the budget; {best} measured faster "
                       f"({times['double']:.3g} s double, {times['fwdrev']:.3g} s fwdrev)")
        return best

    # -- flat <-> named ------------------------------------------------------------------
    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """A flat ``(dim,)`` vector (or ``(k, dim)`` rows) as tensors shaped like the block."""
        lead = tuple(x.shape[:-1])
        return [c.reshape(*lead, *s) for c, s in zip(torch.split(x, self.sizes, dim=-1),
                                                       self.shapes)]

    def flatten(self, point: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The block's entries of ``point`` as one flat vector."""
        return torch.cat([point[k].reshape(-1) for k in self.names])

    def to_point(self, x, meta: Mapping | None = None) -> P.Point:
        """A flat vector as a Point over all of ``obj.names`` (zeros outside the block)."""
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        x = x.to(self.device, self.dtype)
        parts = dict(zip(self.names, self.split(x)))
        return P.Point({k: parts[k].clone() if k in parts else torch.zeros_like(v)
                        for k, v in self.point.items()}, meta=meta)

    # -- products ------------------------------------------------------------------------
    def _batch_loss(self, leaves: Sequence[torch.Tensor], batch) -> torch.Tensor:
        full = {**self.point, **dict(zip(self.names, leaves))}
        return self.obj.batch_loss(full, batch, self.buffers)

    def _build_graphs(self) -> None:
        leaves = [self.point[k].detach().clone().requires_grad_(True) for k in self.names]
        graphs, g = [], torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for w, b in zip(self.weights, self.batches):
            gs = torch.autograd.grad(self._batch_loss(leaves, b), leaves, create_graph=True,
                                     materialize_grads=True)
            graphs.append((w, gs))
            g += w * torch.cat([t.detach().reshape(-1) for t in gs])
        self._leaves, self._graphs, self._grad = leaves, graphs, g

    def gradient(self) -> torch.Tensor:
        """∇L restricted to the block, flat ``(dim,)`` (free when the graphs are cached)."""
        if self.method == "graph":
            if self._graphs is None:
                self._build_graphs()
            return self.obj.all_sum(self._grad.clone())  # Σ over ranks when data is split
        leaves = [self.point[k].detach().clone().requires_grad_(True) for k in self.names]
        g = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for w, b in zip(self.weights, self.batches):
            gs = torch.autograd.grad(self._batch_loss(leaves, b), leaves,
                                     materialize_grads=True)
            g.add_(torch.cat([t.reshape(-1) for t in gs]), alpha=w)
        return self.obj.all_sum(g)  # data split across processes: Σ over the ranks

    def release(self) -> None:
        """Drop the cached graphs (memory)."""
        self._graphs = self._leaves = None

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``H V`` for ``V`` of shape ``(dim, k)`` or ``(dim,)``; one data pass."""
        single = V.dim() == 1
        if single and self.method == "graph" and self._graphs is not None:
            return self._mv_graph(V)
        V2 = V.reshape(self.dim, -1)
        out_dtype = V2.dtype
        rows = V2.T.to(self.device, self.dtype).contiguous()  # (k, dim)
        out = torch.zeros_like(rows)
        way = self._way(rows.shape[0])
        fn = {"graph": self._mm_graph, "double": self._mm_double, "fwdrev": self._mm_fwdrev,
              "vmap": self._mm_vmap}[way]
        t0 = time.perf_counter()
        fn(rows, out)
        if self.auto and rows.shape[0] > 1 and way not in self._multi:
            self._multi[way] = (time.perf_counter() - t0) / rows.shape[0]
        out = self.obj.all_sum(out)  # data split across processes: Σ over the ranks
        self.matvecs += rows.shape[0]
        res = out.T.to(out_dtype)
        return res.reshape(-1) if single else res

    def _way(self, k: int) -> str:
        """The way to take ``k`` products: ``method``, except under ``"auto"`` with 2 to 16
        vectors (vmap holds k copies of the activations): the first such call uses ``method``,
        the second ``"vmap"``, later ones the faster of the two per product (same numbers);
        vmap only when its ``k`` graphs fit the budget."""
        if not self.auto or k == 1 or k > 16:
            return self.method
        if k * self.graph_cost(max(self.batch_samples)) > M.usable(self.budget) - self.bytes:
            return self.method  # vmap would hold k graphs at once
        for way in (self.method, "vmap"):
            if way not in self._multi:
                return way
        return min(self._multi, key=self._multi.get)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v.reshape(-1))

    def _accumulate(self, out_row: torch.Tensor, w: float, hv: Sequence[torch.Tensor]) -> None:
        out_row.add_(torch.cat([h.reshape(-1) for h in hv]), alpha=w)

    def _mv_graph(self, v: torch.Tensor) -> torch.Tensor:
        """One product through the cached graphs with as little bookkeeping as possible."""
        x = v.to(self.device, self.dtype) if v.dtype != self.dtype else v
        acc = None
        for w, gs in self._graphs:
            hv = torch.autograd.grad(gs, self._leaves, grad_outputs=self.split(x),
                                     retain_graph=True, materialize_grads=True)
            flat = torch.cat([h.reshape(-1) for h in hv])
            if w != 1.0:
                flat.mul_(w)
            acc = flat if acc is None else acc.add_(flat)
        acc = self.obj.all_sum(acc)  # data split across processes: Σ over the ranks
        self.matvecs += 1
        return acc.to(v.dtype) if acc.dtype != v.dtype else acc

    def _mm_graph(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        if self._graphs is None:
            self._build_graphs()
        for w, gs in self._graphs:
            for i in range(rows.shape[0]):
                hv = torch.autograd.grad(gs, self._leaves, grad_outputs=self.split(rows[i]),
                                         retain_graph=True, materialize_grads=True)
                self._accumulate(out[i], w, hv)

    def _mm_double(self, rows: torch.Tensor, out: torch.Tensor, batches=None,
                   weights=None) -> None:
        leaves = [self.point[k].detach().clone().requires_grad_(True) for k in self.names]
        k = rows.shape[0]
        for w, b in zip(weights or self.weights, batches or self.batches):
            gs = torch.autograd.grad(self._batch_loss(leaves, b), leaves, create_graph=True,
                                     materialize_grads=True)
            for i in range(k):
                hv = torch.autograd.grad(gs, leaves, grad_outputs=self.split(rows[i]),
                                         retain_graph=i < k - 1, materialize_grads=True)
                self._accumulate(out[i], w, hv)

    def _grad_fn(self, batch):
        return func_grad(lambda *ps: self._batch_loss(ps, batch), argnums=tuple(
            range(len(self.names))))

    def _mm_fwdrev(self, rows: torch.Tensor, out: torch.Tensor, batches=None,
                   weights=None) -> None:
        primals = tuple(self.point[k] for k in self.names)
        for w, b in zip(weights or self.weights, batches or self.batches):
            g = self._grad_fn(b)
            for i in range(rows.shape[0]):
                _, hv = jvp(g, primals, tuple(self.split(rows[i])))
                self._accumulate(out[i], w, hv)

    def _mm_vmap(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        primals = tuple(self.point[k] for k in self.names)
        for w, b in zip(self.weights, self.batches):
            g = self._grad_fn(b)

            def one(*tangents, g=g):
                return jvp(g, primals, tangents)[1]

            hv = vmap(one)(*self.split(rows))
            out.add_(torch.cat([h.reshape(rows.shape[0], -1) for h in hv], dim=1), alpha=w)

    # -- scipy ---------------------------------------------------------------------------
    def scipy(self, shift: float = 0.0, scale: float = 1.0) -> LinearOperator:
        """``scale · (H − shift I)`` as a float64 scipy LinearOperator (products counted)."""

        def mm(X):
            X = np.asarray(X, dtype=np.float64)
            X2 = X.reshape(self.dim, -1)
            Y = self.matmat(torch.from_numpy(X2)).numpy().astype(np.float64)
            if shift:
                Y = Y - shift * X2
            if scale != 1.0:
                Y = scale * Y
            return Y.reshape(X.shape) if X.ndim == 1 else Y

        return LinearOperator((self.dim, self.dim), matvec=mm, matmat=mm, rmatvec=mm,
                              dtype=np.float64)

    def dense(self) -> torch.Tensor:
        """The full ``(dim, dim)`` block, by ``dim`` products (tests and small blocks only)."""
        return self.matmat(torch.eye(self.dim, dtype=torch.float64))


def hvp(obj, vectors, point=None, params=None, method: str = "auto"):
    """``H v`` for one vector (a Point over ``obj.names`` or the block) or a list of them;
    returns Points over ``obj.names`` (zeros outside the block)."""
    op = HessianOperator(obj, point, params, method)
    single = isinstance(vectors, Mapping)
    vecs = [vectors] if single else list(vectors)
    V = torch.stack([op.flatten(v) for v in vecs], dim=1)
    HV = op.matmat(V)
    out = [op.to_point(HV[:, i]) for i in range(HV.shape[1])]
    return out[0] if single else out
