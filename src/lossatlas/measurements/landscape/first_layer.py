"""The exact first-layer (affine) hoisting behind fast surfaces.

When a network's first parametrized layer is a ``Linear`` / ``Conv1d`` / ``Conv2d`` /
``Embedding`` applied once to the data, its output is affine in its parameters::

    layer(x; W + a·D₁ + b·D₂, c + a·e₁ + b·e₂) = Z₀ + a·Z₁ + b·Z₂,
    Z₀ = layer(x; W, c),  Z_k = layer(x; D_k, e_k)

so Z₀, Z₁, Z₂ are computed once per data batch (:func:`hoist`) and each grid point replaces the
layer's forward by their combination (:class:`Feeder`, :meth:`AffineOutputs.combine`).
:func:`find_affine_first_layer` decides whether the model in hand has such a layer: which
module runs first, on what, how often, and whether its weight or bias is read anywhere else in
the forward (:func:`reads_outside`, tied weights). The engine (:mod:`.engine`) checks the trick
against a plain forward before using it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from lossatlas.core import memory as M
from lossatlas.core import params as P
from lossatlas.core.batching import Batch, slice_batch
from lossatlas.core.objective import Objective, bn_modules

__all__ = ["AFFINE_MEMORY", "AffineOutputs", "Feeder", "FirstLayer", "fan_in",
           "find_affine_first_layer", "hoist", "probe", "reads_outside"]

_AFFINE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
AFFINE_MEMORY = 2 * 2**30  # bytes of precomputed first-layer outputs allowed


@dataclass
class FirstLayer:
    """The detected first parametrized layer: its name, module and parameter names."""

    name: str
    module: nn.Module
    weight: str
    bias: str | None
    tied: bool = False  # its parameters are also used under another name

    def apply(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        """The layer's function at other parameters (linear in (weight, bias))."""
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(x, weight, bias)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return m._conv_forward(x, weight, bias)
        return F.embedding(x, weight, m.padding_idx)


# -- detection -----------------------------------------------------------------------------
def probe(obj: Objective, size: int = 16) -> Batch:
    """The first ``size`` samples of the first batch: traces that only look at which modules
    run, and on what, need no more (keeps detection nearly free for large batches)."""
    b = obj.batches[0]
    return Batch(slice_batch(b.inputs, 0, size), slice_batch(b.targets, 0, size), b.weight)


def _trace_first(model: nn.Module, obj: Objective, batch: Batch, train_bn: bool):
    """Run one forward with hooks; return (first module with own parameters, its call count,
    its positional inputs and keyword inputs of the first call)."""
    seen: list[tuple[nn.Module, tuple, dict]] = []
    counts: dict[int, int] = {}
    handles = []

    def hook(m, args, kwargs):
        counts[id(m)] = counts.get(id(m), 0) + 1
        if not seen:
            seen.append((m, args, kwargs))

    for m in model.modules():
        if next(m.parameters(recurse=False), None) is not None:
            handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    bns = [m for _, m in bn_modules(model)]
    try:
        if train_bn:
            for m in bns:
                m.train()
        with torch.no_grad():
            obj.forward_module(model, batch)
    finally:
        for h in handles:
            h.remove()
        for m in bns:
            m.eval()
    if not seen:
        return None, 0, (), {}
    m, args, kwargs = seen[0]
    return m, counts[id(m)], args, kwargs


def _plain_first(first: nn.Module | None, count: int, args: tuple, kwargs: dict) -> str:
    """Why the traced first module cannot be hoisted, or "" when it can."""
    if first is None:
        return "the model has no parameter"
    if type(first) not in _AFFINE_TYPES:
        return f"the first layer is a {type(first).__name__}, not Linear/Conv/Embedding"
    if count != 1:
        return "the first layer is called more than once per forward"
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
        return "the first layer is not called with one tensor"
    if first._forward_hooks or first._forward_pre_hooks:
        return "the first layer carries hooks"
    if isinstance(first, nn.Embedding) and first.max_norm is not None:
        return "Embedding(max_norm=...) is not affine in its weight"
    return ""


def _input_is_data(model: nn.Module, obj: Objective, batch: Batch, first: nn.Module,
                   x0: torch.Tensor) -> bool:
    """The first layer's input stays ``x0`` when every parameter of the model changes and in
    BN-train mode (two more traced forwards; parameters and buffers restored)."""
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    saved_buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    gen = torch.Generator(device="cpu").manual_seed(12345)
    try:
        with torch.no_grad():
            for _, p in model.named_parameters():
                noise = torch.randn(tuple(p.shape), generator=gen).to(p.device, p.dtype)
                p.mul_(1.5).add_(noise)
        second, _, args2, _ = _trace_first(model, obj, batch, train_bn=False)
        try:
            third, _, args3, _ = _trace_first(model, obj, batch, train_bn=True)
        except (RuntimeError, ValueError):  # e.g. BN train mode on a one-sample probe
            third, args3 = None, ()
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(saved[n])
            for n, b in model.named_buffers():
                b.copy_(saved_buffers[n])
    return all(other is first and a and torch.equal(a[0], x0)
               for other, a in ((second, args2), (third, args3)))


def find_affine_first_layer(model: nn.Module, obj: Objective) -> tuple[FirstLayer | None, str]:
    """The first leaf module with parameters executed in a forward, if the trick applies.

    Conditions: a plain ``Linear`` / ``Conv1d`` / ``Conv2d`` / ``Embedding`` (``max_norm`` None)
    without hooks, called once per forward with one tensor argument that does not change when
    every parameter of the model changes (checked by a second traced forward at perturbed
    parameters) nor between eval and BN-train mode. Returns (layer or None, reason).
    """
    batch = probe(obj)
    first, count, args, kwargs = _trace_first(model, obj, batch, train_bn=False)
    why = _plain_first(first, count, args, kwargs)
    if why:
        return None, why
    if not _input_is_data(model, obj, batch, first, args[0].clone()):
        return None, "the first layer's input depends on parameters or on the BN mode"
    prefix = next(n for n, m in model.named_modules() if m is first)
    pre = f"{prefix}." if prefix else ""
    weight = pre + "weight"
    bias = pre + "bias" if getattr(first, "bias", None) is not None else None
    own = {id(first.weight)} | ({id(first.bias)} if bias else set())
    uses = sum(id(p) in own for _, p in model.named_parameters(remove_duplicate=False))
    try:
        reads = reads_outside(model, obj, batch, first)
    except Exception as exc:  # a forward that cannot run under a TorchFunctionMode
        return None, f"reads of the first layer could not be traced ({type(exc).__name__})"
    tied = uses > len(own) or bool(reads)
    reason = "ok"
    if reads:
        reason = (f"ok; the first layer's parameters are also read elsewhere in the forward "
                  f"({', '.join(sorted(set(reads)))}), so they are written at every point too")
    return FirstLayer(prefix, first, weight, bias, tied), reason


#: Tensor attributes that read no values (reading them cannot make the trick inexact).
_METADATA = frozenset({
    "shape", "dtype", "device", "ndim", "layout", "requires_grad", "is_leaf", "grad_fn",
    "is_cuda", "is_sparse", "is_quantized", "is_meta", "names", "size", "dim", "numel",
    "stride", "is_contiguous", "is_floating_point", "is_complex", "element_size", "nelement",
    "data_ptr", "__len__", "_version",
})


def _func_name(func) -> str:
    name = getattr(func, "__name__", str(func))
    if name in ("__get__", "__set__"):  # a Tensor property: name it by its descriptor
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


class _ReadWatch(TorchFunctionMode):
    """Records every torch function that receives one of ``watched`` (by identity) while
    ``inside[0]`` is 0, i.e. outside the first layer's own call."""

    def __init__(self, watched: list[torch.Tensor], inside: list[int]):
        super().__init__()
        self.watched, self.inside, self.reads = watched, inside, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.inside[0]:
            name = _func_name(func)
            if name not in _METADATA:
                for t in tree_flatten((args, kwargs))[0]:
                    if any(t is w for w in self.watched):
                        self.reads.append(name)
                        break
        return func(*args, **kwargs)


def reads_outside(model: nn.Module, obj: Objective, batch: Batch, first: nn.Module
                  ) -> list[str]:
    """Names of the torch functions that read the first layer's weight or bias anywhere in
    one forward except inside that layer's own call (tied weights such as
    ``F.linear(h, self.inp.weight)``, a penalty on the weights in ``forward``, ...)."""
    watched = [t for t in (first.weight, getattr(first, "bias", None)) if t is not None]
    inside = [0]

    def enter(m, args):
        inside[0] += 1

    def leave(m, args, out):
        inside[0] -= 1

    hs = [first.register_forward_pre_hook(enter), first.register_forward_hook(leave)]
    watch = _ReadWatch(watched, inside)
    try:
        with torch.no_grad(), watch:
            obj.forward_module(model, batch)
    finally:
        for h in hs:
            h.remove()
    return watch.reads


def fan_in(m: nn.Module) -> int:
    """Multiply-adds per output element of the layer (0 for an Embedding lookup)."""
    if isinstance(m, nn.Linear):
        return m.in_features
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return m.in_channels // m.groups * math.prod(m.kernel_size)
    return 0


# -- the hoisted outputs -------------------------------------------------------------------
@dataclass
class AffineOutputs:
    """Per data batch j: ``Z[j] = [Z₀, Z₁, ...]`` (the first layer's output at the center and
    along each direction), an output buffer, and for two directions the row cache
    (c₀, Z₀ + c₀Z₁) with its buffer."""

    Z: list = field(default_factory=list)
    buf: list = field(default_factory=list)
    rows: list = field(default_factory=list)
    rows_buf: list = field(default_factory=list)

    def forget_rows(self) -> None:
        """Drop the row cache (after the first layer's parameters were written)."""
        self.rows = [(None, None)] * len(self.rows)

    def combine(self, i: int, coeffs: Sequence[float]) -> torch.Tensor:
        """Z₀ + c₀Z₁ + c₁Z₂ for batch i. Z₀ + c₀Z₁ is kept while c₀ stays the same (a row of
        a surface), so a grid point costs one fused add; the same float operations in the same
        order either way."""
        zs, out = self.Z[i], self.buf[i]
        if len(coeffs) == 2 and coeffs[1] != 0:
            key, base = self.rows[i]
            if key != coeffs[0]:
                base = self.rows_buf[i]
                if coeffs[0] != 0:
                    torch.add(zs[0], zs[1], alpha=coeffs[0], out=base)
                else:
                    base.copy_(zs[0])
                self.rows[i] = (coeffs[0], base)
            return torch.add(base, zs[2], alpha=coeffs[1], out=out)
        if coeffs and coeffs[0] != 0:
            torch.add(zs[0], zs[1], alpha=coeffs[0], out=out)
        else:
            out.copy_(zs[0])
        for a, z in zip(coeffs[1:], zs[2:]):
            if a != 0:
                out.add_(z, alpha=a)
        return out


def _outputs_along(first: FirstLayer, x: torch.Tensor, directions: Sequence[P.Point]
                   ) -> list[torch.Tensor]:
    """[Z₀, Z₁, ...] on the first layer's input ``x``: at its current parameters, then at each
    direction's weight and bias components (zeros where a direction has none)."""
    m = first.module
    zs = [first.apply(x, m.weight, getattr(m, "bias", None))]
    for d in directions:
        dw = d.get(first.weight)
        if dw is None:
            dw = torch.zeros_like(m.weight)
        db = None
        if first.bias is not None:
            db = d.get(first.bias)
            if db is None:
                db = torch.zeros_like(m.bias)
        zs.append(first.apply(x, dw, db))
    return zs


@torch.no_grad()
def hoist(first: FirstLayer, model: nn.Module, obj: Objective, directions: Sequence[P.Point]
          ) -> AffineOutputs | None:
    """Z₀ (``model`` holds the center) and Z_k (direction k, its bias component included) for
    every batch of ``obj``; None when they (with their buffers) exceed :data:`AFFINE_MEMORY`
    or half the memory budget."""
    inputs = []
    h = first.module.register_forward_pre_hook(lambda mod, args: inputs.append(args[0]))
    out, total = AffineOutputs(), 0
    limit = min(AFFINE_MEMORY, M.budget(device=obj.device) / 2)
    try:
        for b in obj.batches:
            inputs.clear()
            obj.forward_module(model, b)
            zs = _outputs_along(first, inputs[0], directions)
            total += sum(z.numel() * z.element_size() for z in zs) * 5 // 3
            if total > limit:
                return None
            out.Z.append(zs)
            out.buf.append(torch.empty_like(zs[0]))
            if len(zs) == 3:
                out.rows_buf.append(torch.empty_like(zs[0]))
                out.rows.append((None, None))
    finally:
        h.remove()
    return out


class Feeder:
    """Stands in for the first layer's forward: on its j-th call of a pass it returns
    Z₀ + Σ c_k Z_k for data batch j (the pass over the batches is in order)."""

    def __init__(self, affine: AffineOutputs):
        self.affine, self.coeffs, self.j = affine, [], 0

    def start(self, coeffs) -> None:
        self.coeffs, self.j = coeffs, 0

    def __call__(self, *args, **kwargs):
        out = self.affine.combine(self.j, self.coeffs)
        self.j += 1
        return out
