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

``method="auto"`` picks ``"graph"`` when the cached graphs fit (``cache_batches`` batches at most,
default 64), else ``"double"``; for several vectors per pass it measures that way against
``"vmap"`` on the first two such calls and keeps the faster (see :meth:`HessianOperator._way`).

benchmarks/hessian.py measures all four side by side; on the
9,610-parameter MLP over all of digits (2 shared CPU cores) one product took 1.74 ms
(``graph``), 3.12 (``double``), 5.69 (``fwdrev``), 5.92 (``vmap``), against 1.62 for PyHessian's
cached-graph product and 6.88 for curvlinops; with 16 vectors per pass ``graph`` and ``double``
are within noise of each other (1.5-1.9 ms per product) and ``vmap`` is at 3.0.
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

from lossatlas import params as P
from lossatlas.errors import LossAtlasError

__all__ = ["METHODS", "HessianOperator", "hvp", "resolve_params"]

METHODS = ("auto", "graph", "double", "fwdrev", "vmap")


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
    """

    def __init__(
        self,
        obj,
        point: Mapping[str, torch.Tensor] | None = None,
        params: str | Sequence[str] | None = None,
        method: str = "auto",
        cache_batches: int = 64,
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
        if method == "auto":
            method = "graph" if len(obj.batches) <= cache_batches else "double"
        self.method = method
        self._multi: dict[str, float] = {}  # auto: seconds per product with k > 1, by way
        self.buffers = obj.buffers_at(self.point)
        self.matvecs = 0
        self._graphs: list[tuple[float, tuple[torch.Tensor, ...]]] | None = None
        self._leaves: list[torch.Tensor] | None = None
        self._grad: torch.Tensor | None = None

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
        for w, b in zip(self.obj.weights, self.obj.batches):
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
            return self._grad.clone()
        return self.flatten(self.obj.grad(self.point))

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
        self.matvecs += rows.shape[0]
        res = out.T.to(out_dtype)
        return res.reshape(-1) if single else res

    def _way(self, k: int) -> str:
        """The way to take ``k`` products: ``method``, except under ``"auto"`` with 2 to 16
        vectors (vmap holds k copies of the activations): the first such call uses ``method``,
        the second ``"vmap"``, later ones the faster of the two per product (same numbers)."""
        if not self.auto or k == 1 or k > 16:
            return self.method
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

    def _mm_double(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        leaves = [self.point[k].detach().clone().requires_grad_(True) for k in self.names]
        k = rows.shape[0]
        for w, b in zip(self.obj.weights, self.obj.batches):
            gs = torch.autograd.grad(self._batch_loss(leaves, b), leaves, create_graph=True,
                                     materialize_grads=True)
            for i in range(k):
                hv = torch.autograd.grad(gs, leaves, grad_outputs=self.split(rows[i]),
                                         retain_graph=i < k - 1, materialize_grads=True)
                self._accumulate(out[i], w, hv)

    def _grad_fn(self, batch):
        return func_grad(lambda *ps: self._batch_loss(ps, batch), argnums=tuple(
            range(len(self.names))))

    def _mm_fwdrev(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        primals = tuple(self.point[k] for k in self.names)
        for w, b in zip(self.obj.weights, self.obj.batches):
            g = self._grad_fn(b)
            for i in range(rows.shape[0]):
                _, hv = jvp(g, primals, tuple(self.split(rows[i])))
                self._accumulate(out[i], w, hv)

    def _mm_vmap(self, rows: torch.Tensor, out: torch.Tensor) -> None:
        primals = tuple(self.point[k] for k in self.names)
        for w, b in zip(self.obj.weights, self.obj.batches):
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
