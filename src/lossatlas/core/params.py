"""The parameter space: points and directions as name -> tensor mappings.

A *point* (a model's parameters) and a *direction* (a perturbation of them) are both
``Mapping[str, torch.Tensor]`` over the same names, like ``dict(model.named_parameters())``.
:class:`Point` is a ``dict`` with vector-space arithmetic; every function here accepts plain
dicts too. Arithmetic, dot products, norms (per filter, per layer, whole model),
Gram-Schmidt, flattening and hashing live here and nowhere else.

>>> import torch, lossatlas as la
>>> model = torch.nn.Linear(3, 2)
>>> theta = la.params.of(model)
>>> sorted(theta)
['bias', 'weight']
>>> float((theta - theta).norm())
0.0
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from lossatlas.core.errors import LossAtlasError

Tensors = Mapping[str, torch.Tensor]

__all__ = [
    "Point",
    "axpy",
    "cosine",
    "dot",
    "filter_norms",
    "flatten",
    "gram_schmidt",
    "hash_point",
    "is_bias_or_bn",
    "layer_norms",
    "lincomb",
    "match_names",
    "norm",
    "of",
    "select",
    "unflatten",
    "zeros_like",
]


class Point(dict):
    """A name -> tensor mapping with vector-space arithmetic.

    ``meta`` holds provenance (how a direction was made: seed, normalization, ...).

    >>> p = Point(w=torch.ones(2)); q = 2 * p - p
    >>> q["w"].tolist(), float(p.dot(q))
    ([1.0, 1.0], 2.0)
    """

    def __init__(self, *args, meta: Mapping | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.meta: dict = dict(meta or {})

    # -- arithmetic -------------------------------------------------------------------------
    def _zip(self, other: Tensors, op: Callable) -> Point:
        _check_same_keys(self, other)
        return Point({k: op(v, other[k]) for k, v in self.items()})

    def __add__(self, other):
        if isinstance(other, Mapping):
            return self._zip(other, torch.add)
        return Point({k: v + other for k, v in self.items()})

    __radd__ = __add__

    def __sub__(self, other):
        if isinstance(other, Mapping):
            return self._zip(other, torch.sub)
        return Point({k: v - other for k, v in self.items()})

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, c):
        if isinstance(c, Mapping):
            return self._zip(c, torch.mul)
        return Point({k: v * c for k, v in self.items()})

    __rmul__ = __mul__

    def __truediv__(self, c):
        return Point({k: v / c for k, v in self.items()})

    def __neg__(self):
        return Point({k: -v for k, v in self.items()})

    def dot(self, other: Tensors) -> torch.Tensor:
        return dot(self, other)

    def norm(self) -> torch.Tensor:
        return norm(self)

    def detach(self) -> Point:
        return Point({k: v.detach() for k, v in self.items()}, meta=self.meta)

    def clone(self) -> Point:
        return Point({k: v.detach().clone() for k, v in self.items()}, meta=self.meta)

    def to(self, *args, **kwargs) -> Point:
        return Point({k: v.to(*args, **kwargs) for k, v in self.items()}, meta=self.meta)

    def numel(self) -> int:
        return sum(v.numel() for v in self.values())

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self.items())
        return f"Point({shapes})"


def _check_same_keys(a: Tensors, b: Tensors) -> None:
    if a.keys() != b.keys():
        missing = sorted(set(a) ^ set(b))[:5]
        raise LossAtlasError(
            f"the two points cover different parameters (e.g. {missing}); build both from the "
            "same model with the same include/exclude selection"
        )


# -- selection ------------------------------------------------------------------------------
def is_bias_or_bn(name: str, tensor: torch.Tensor) -> bool:
    """True for 1-D (or 0-D) parameters: biases and normalization scales/shifts.

    This is Li et al. 2018's ``ignore="biasbn"`` rule: every parameter with ``dim() <= 1``.
    """
    return tensor.dim() <= 1


def select(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    trainable_only: bool = True,
    skip_1d: bool = False,
) -> list[str]:
    """Names of the parameters that make up the perturbed space, in model order.

    ``include`` / ``exclude`` are glob patterns over names (``"layer1.*"``, ``"*.bias"``);
    ``trainable_only`` drops parameters with ``requires_grad=False``; ``skip_1d`` drops biases
    and normalization parameters (see :func:`is_bias_or_bn`).
    """
    names = [name for name, p in model.named_parameters()
             if not (trainable_only and not p.requires_grad)
             and not (skip_1d and is_bias_or_bn(name, p))]
    names = match_names(names, include, exclude)
    if not names:
        raise LossAtlasError(
            f"no parameter of the model matches include={include!r}, exclude={exclude!r}, "
            f"trainable_only={trainable_only}; list the names with model.named_parameters() "
            "and widen the patterns"
        )
    return names


def match_names(names: Sequence[str], include: str | Sequence[str] | None = None,
                exclude: str | Sequence[str] | None = None) -> list[str]:
    """The ``names`` (in order) matching any ``include`` glob (all when None) and no
    ``exclude`` glob, e.g. ``include="layer1.*"``, ``exclude="*.bias"``.

    >>> match_names(["0.weight", "0.bias", "2.weight"], exclude="*.bias")
    ['0.weight', '2.weight']
    """
    inc = [include] if isinstance(include, str) else list(include or [])
    exc = [exclude] if isinstance(exclude, str) else list(exclude or [])
    return [n for n in names
            if (not inc or any(fnmatch.fnmatchcase(n, pat) for pat in inc))
            and not any(fnmatch.fnmatchcase(n, pat) for pat in exc)]


def of(model: nn.Module, names: Sequence[str] | None = None, **selection) -> Point:
    """The model's current parameters as a detached :class:`Point` (copies, not views).

    ``names`` fixes the set directly; otherwise ``selection`` goes to :func:`select`.
    """
    if names is None:
        names = select(model, **selection)
    params = dict(model.named_parameters())
    unknown = [n for n in names if n not in params]
    if unknown:
        raise LossAtlasError(f"names {unknown[:5]} are not parameters of the model; check spelling")
    return Point({n: params[n].detach().clone() for n in names})


def zeros_like(p: Tensors) -> Point:
    return Point({k: torch.zeros_like(v) for k, v in p.items()})


# -- linear algebra -------------------------------------------------------------------------
def dot(a: Tensors, b: Tensors) -> torch.Tensor:
    """Euclidean inner product Σ_k <a_k, b_k> (accumulated in float64)."""
    _check_same_keys(a, b)
    total = torch.zeros((), dtype=torch.float64)
    for k, v in a.items():
        total = total + torch.sum(v.double() * b[k].double()).cpu()
    return total


def norm(a: Tensors) -> torch.Tensor:
    """Whole-model Euclidean norm ‖a‖."""
    return torch.sqrt(dot(a, a))


def cosine(a: Tensors, b: Tensors) -> float:
    """cos∠(a, b) = <a, b> / (‖a‖‖b‖); 0 when either is zero."""
    na, nb = norm(a), norm(b)
    if na == 0 or nb == 0:
        return 0.0
    return float(dot(a, b) / (na * nb))


def axpy(center: Tensors, coeffs: Sequence[float], directions: Sequence[Tensors]) -> Point:
    """θ + Σ_i a_i d_i, computed directly from the center (never by accumulation)."""
    if len(coeffs) != len(directions):
        raise LossAtlasError("need one coefficient per direction")
    out = {}
    for k, v in center.items():
        acc = v.clone()
        for a, d in zip(coeffs, directions):
            if a != 0:
                acc.add_(d[k], alpha=float(a))
        out[k] = acc
    return Point(out)


def lincomb(coeffs: Sequence[float], points: Sequence[Tensors]) -> Point:
    """Σ_i c_i p_i."""
    if not points:
        raise LossAtlasError("lincomb needs at least one point")
    keys = list(points[0])
    return Point({k: sum(float(c) * p[k] for c, p in zip(coeffs, points)) for k in keys})


def filter_norms(a: Tensors) -> dict[str, torch.Tensor]:
    """Per-filter norms: for a tensor of shape (F, ...) the (F,) norms of its slices along dim 0
    (conv filters, rows of a Linear weight); a 1-D tensor counts as one filter (shape (1,))."""
    out = {}
    for k, v in a.items():
        if v.dim() <= 1:
            out[k] = v.norm().reshape(1)
        else:
            out[k] = v.reshape(v.shape[0], -1).norm(dim=1)
    return out


def layer_norms(a: Tensors) -> dict[str, torch.Tensor]:
    """Per-tensor ("layer") norms, one scalar per name."""
    return {k: v.norm() for k, v in a.items()}


def gram_schmidt(vectors: Sequence[Tensors], normalize: bool = False) -> list[Point]:
    """Orthogonalize ``vectors`` in order (modified Gram-Schmidt, float64 coefficients).

    With ``normalize=False`` each output keeps the norm of its input so that filter-normalized
    scales survive; with ``normalize=True`` outputs have unit norm.
    """
    out: list[Point] = []
    for v in vectors:
        w = Point({k: t.clone() for k, t in v.items()})
        n0 = norm(v)
        for u in out:
            uu = dot(u, u)
            if uu > 0:
                w = w - u * float(dot(w, u) / uu)
        nw = norm(w)
        if nw == 0:
            raise LossAtlasError("gram_schmidt: the vectors are linearly dependent")
        scale = 1.0 / float(nw) if normalize else float(n0 / nw)
        w = w * scale
        w.meta = dict(getattr(v, "meta", {}) or {})
        out.append(w)
    return out


def flatten(a: Tensors, names: Iterable[str] | None = None) -> torch.Tensor:
    """Concatenate the tensors (in ``names`` order, default mapping order) into one 1-D tensor."""
    names = list(a) if names is None else list(names)
    return torch.cat([a[k].reshape(-1) for k in names])


def unflatten(vec: torch.Tensor, like: Tensors) -> Point:
    """Inverse of :func:`flatten`: split ``vec`` into tensors shaped like ``like``."""
    total = sum(v.numel() for v in like.values())
    if vec.numel() != total:
        raise LossAtlasError(f"vector has {vec.numel()} entries but the point has {total}")
    out, i = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = vec[i : i + n].reshape(v.shape).to(v.dtype)
        i += n
    return Point(out)


def hash_point(a: Tensors, length: int = 16) -> str:
    """A stable content hash (sha256 over sorted names, shapes and float32 bytes)."""
    h = hashlib.sha256()
    for k in sorted(a):
        v = a[k].detach().to("cpu", torch.float32).contiguous()
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(np.ascontiguousarray(v.numpy()).tobytes())
    return h.hexdigest()[:length]
