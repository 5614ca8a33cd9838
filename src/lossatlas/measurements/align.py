"""Permutation alignment of two networks: Git Re-Basin weight matching and activation matching.

Hidden units of a layer can be permuted without changing the function: permute the rows of the
layer that produces them (weight, bias, BatchNorm weight / bias / running statistics) and the
columns of every layer that reads them. Two independently trained networks differ largely by
such a permutation (Entezari et al. 2022), so the straight line between them crosses a barrier
that mostly disappears once model B is permuted to match model A.

**The permutation structure** is derived from the model itself (:func:`permutation_spec`): the
model is traced with ``torch.fx`` and every hidden channel space is one *group*; a Linear or
Conv creates a group on its output, BatchNorm / activations / pooling / flatten carry it, and a
residual addition ``x + f(x)`` merges the groups of its two inputs (a residual stream shares one
permutation). The inputs and the outputs are never permuted. Models the trace cannot describe
(attention, embeddings, parameters used outside a module, zero-padding shortcuts) are refused
with one sentence.

**Weight matching** (Ainsworth, Hayase, Srinivasa 2023, *Git Re-Basin*, Alg. 2): maximize
``⟨θ_a, π(θ_b)⟩ = Σ_params ⟨W_a, π(W_b)⟩`` by coordinate ascent over the groups: for group g,
with every other permutation held, the objective is linear in P_g,

    C_g[i, j] = Σ_{(W, axis) ∈ g} ⟨W_a[i along axis], π_{−g}(W_b)[j along axis]⟩,

and the best P_g is the linear assignment ``argmax_p Σ_i C_g[i, p_i]``
(``scipy.optimize.linear_sum_assignment``). Each step cannot lower the objective; passes over
the groups in a random order repeat until one pass changes no permutation (a fixed point).

**Activation matching** (Entezari et al. 2022; Ainsworth et al. Alg. 1): on data, the unit
correlations corr(a_i, b_j) of every traced activation of a group (pre- and post-activation,
over samples and spatial positions) are summed and one linear assignment per group maximizes
them.

>>> import torch, lossatlas as la
>>> a = la.zoo.build("mlp", in_features=4, num_classes=3, width=8, depth=2, seed=0)
>>> b = la.zoo.build("mlp", in_features=4, num_classes=3, width=8, depth=2, seed=1)
>>> c = align(a, b)
>>> x = torch.randn(5, 4)
>>> torch.allclose(c(x), b(x), atol=1e-6)
True
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from lossatlas.core.errors import LossAtlasError
from lossatlas.core.objective import eval_mode
from lossatlas.core.progress import track

__all__ = [
    "Alignment", "PermutationSpec", "activation_matching", "align", "apply_permutation",
    "inner_product", "match", "permutation_spec", "weight_matching",
]

FIXED = -1  # the group of the inputs and outputs: never permuted

_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.LeakyReLU, nn.SiLU, nn.Softplus,
    nn.Mish, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
)
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.gelu, torch.tanh, F.tanh, torch.sigmoid, F.sigmoid, F.elu,
    F.leaky_relu, F.silu, F.softplus, F.dropout, F.max_pool1d, F.max_pool2d, F.avg_pool1d,
    F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.nn.functional.relu6,
}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous"}
_SUPPORTED = ("MLPs, CNNs and ResNets built from Linear, Conv, BatchNorm, LayerNorm, pooling, "
              "element-wise activations, flatten and residual additions")


# -- the structure --------------------------------------------------------------------------
@dataclass
class PermutationSpec:
    """Which axis of which tensor each permutation group acts on.

    ``sizes``: group id -> number of units. ``axes``: parameter or buffer name -> list of
    ``(axis, group, block)``; ``block`` > 1 when the axis is a flattened ``(units, block)``
    pair (a Linear reading a flattened ``(C, H, W)`` map, channel-major). ``nodes``: group id
    -> ``[(fx node name, channel dim)]``, the traced activations that carry the group.
    """

    sizes: dict[int, int]
    axes: dict[str, list[tuple[int, int, int]]]
    nodes: dict[int, list[tuple[str, int]]] = field(default_factory=dict)

    @property
    def groups(self) -> list[int]:
        return sorted(self.sizes)

    def members(self, g: int) -> list[tuple[str, int, int]]:
        """``(name, axis, block)`` of every tensor axis that group ``g`` permutes."""
        return [(n, ax, blk) for n, entries in self.axes.items() for ax, gg, blk in entries
                if gg == g]


class _Groups:
    """Union-find over channel groups; FIXED absorbs whatever it is merged with."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {FIXED: FIXED}
        self.size: dict[int, int] = {}

    def new(self, size: int) -> int:
        g = len(self.parent)
        self.parent[g], self.size[g] = g, int(size)
        return g

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if FIXED in (ra, rb):
            keep, drop = FIXED, rb if ra == FIXED else ra
        else:
            if self.size[ra] != self.size[rb]:
                raise LossAtlasError(f"model: {where} adds tensors of {self.size[ra]} and "
                                     f"{self.size[rb]} channels, so no permutation can be shared; "
                                     "align supports residual additions of equal width only.")
            keep, drop = min(ra, rb), max(ra, rb)
        self.parent[drop] = keep
        return keep


@dataclass
class _Value:
    group: int
    kind: str  # "conv": channels on dim 1, then space; "vec": channels last; "any": unknown
    flat: bool = False  # a flattened conv map: channel-major (C, space) on the last axis


def _refuse(model: nn.Module, what: str) -> LossAtlasError:
    return LossAtlasError(
        f"model: cannot derive the permutation structure of {type(model).__name__} ({what}); "
        f"align supports {_SUPPORTED}."
    )


def _trace(model: nn.Module):
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types on data-dependent Python
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _refuse(model, f"torch.fx cannot trace it: {first[:120]}") from None


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutation groups of ``model``, derived by tracing it with ``torch.fx``.

    Raises :class:`LossAtlasError` naming the first operation the derivation does not know.
    """
    gm = _trace(model)
    groups = _Groups()
    values: dict[str, _Value] = {}
    module_out: dict[str, int] = {}
    axes: dict[str, list[tuple[int, int, int]]] = {}
    used: set[str] = set()
    mods = dict(gm.named_modules())

    def val(arg) -> _Value:
        if not isinstance(arg, torch.fx.Node) or arg.name not in values:
            raise _refuse(model, f"an input that is not a traced tensor: {arg!r}")
        return values[arg.name]

    def put(name: str, param: str, entries: list[tuple[int, int, int]]) -> None:
        axes.setdefault(param, [])
        for ax, g, blk in entries:
            if (ax, g, blk) not in axes[param]:
                axes[param].append((ax, g, blk))
        used.add(param)

    for node in gm.graph.nodes:
        where = f"node {node.name}"
        if node.op == "placeholder":
            values[node.name] = _Value(FIXED, "any")
        elif node.op == "get_attr":
            raise _refuse(model, f"the tensor {node.target!r} is used outside a module")
        elif node.op == "call_module":
            m = mods[node.target]
            x = val(node.args[0])
            prefix = f"{node.target}." if node.target else ""
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                conv = not isinstance(m, nn.Linear)
                if conv and (m.groups != 1 or x.kind == "vec"):
                    raise _refuse(model, f"grouped or misplaced convolution {node.target}")
                if not conv and x.kind == "conv" and not x.flat:
                    raise _refuse(model, f"Linear {node.target} reads an unflattened feature map")
                n_in = m.in_channels if conv else m.in_features
                n_out = m.out_channels if conv else m.out_features
                g_in, blk = groups.find(x.group), 1
                if g_in != FIXED:
                    size = groups.size[g_in]
                    if n_in % size:
                        raise _refuse(model, f"{node.target} reads {n_in} features from "
                                             f"{size} channels")
                    blk = n_in // size
                if node.target not in module_out:
                    module_out[node.target] = groups.new(n_out)
                g_out = module_out[node.target]
                put(node.name, prefix + "weight", [(0, g_out, 1), (1, x.group, blk)])
                if m.bias is not None:
                    put(node.name, prefix + "bias", [(0, g_out, 1)])
                values[node.name] = _Value(g_out, "conv" if conv else "vec")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                g = x.group
                if x.flat:
                    raise _refuse(model, f"BatchNorm {node.target} on a flattened map")
                names = [n for n, _ in m.named_parameters(recurse=False)]
                names += [n for n in ("running_mean", "running_var")
                          if getattr(m, n, None) is not None]
                for n in names:
                    put(node.name, prefix + n, [(0, g, 1)])
                used.update(prefix + n for n, _ in m.named_buffers(recurse=False))
                values[node.name] = _Value(g, "conv" if x.kind == "conv" or
                                           isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d))
                                           else x.kind)
            elif isinstance(m, nn.LayerNorm):
                if len(m.normalized_shape) != 1 or x.kind == "conv" or x.flat:
                    raise _refuse(model, f"LayerNorm {node.target} over more than the features")
                for n, _ in m.named_parameters(recurse=False):
                    put(node.name, prefix + n, [(0, x.group, 1)])
                values[node.name] = _Value(x.group, "vec")
            elif isinstance(m, _ELEMENTWISE_MODULES):
                values[node.name] = x
            elif isinstance(m, _POOL_MODULES):
                if x.kind == "vec" or x.flat:
                    raise _refuse(model, f"pooling {node.target} over features")
                values[node.name] = _Value(x.group, "conv")
            elif isinstance(m, nn.Flatten):
                values[node.name] = _flatten(x, m.start_dim, model, where)
            else:
                raise _refuse(model, f"module {node.target} of type {type(m).__name__}")
            if any(True for _ in m.parameters(recurse=False)) and not isinstance(
                m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LayerNorm,
                    nn.modules.batchnorm._BatchNorm)
            ):
                raise _refuse(model, f"module {node.target} of type {type(m).__name__}")
        elif node.op == "call_function":
            fn = node.target
            if fn in _ELEMENTWISE_FUNCTIONS:
                values[node.name] = val(node.args[0])
            elif fn in (operator.add, torch.add):
                tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
                vs = [val(a) for a in tensors]
                if len(vs) == 1:  # x + constant: a shared constant cannot follow a permutation
                    raise _refuse(model, f"a constant added at {where}")
                a, b = vs
                if (a.kind != b.kind and "any" not in (a.kind, b.kind)) or a.flat != b.flat:
                    raise _refuse(model, f"an addition of differently shaped tensors at {where}")
                g = groups.union(a.group, b.group, where)
                values[node.name] = _Value(g, a.kind if a.kind != "any" else b.kind, a.flat)
            elif fn in (operator.mul, torch.mul, operator.truediv) and sum(
                isinstance(a, torch.fx.Node) for a in node.args
            ) == 1 and isinstance(node.args[1], (int, float)):
                values[node.name] = val(node.args[0])
            elif fn is torch.flatten:
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                values[node.name] = _flatten(val(node.args[0]), start, model, where)
            else:
                raise _refuse(model, f"the function {getattr(fn, '__name__', fn)} at {where}")
        elif node.op == "call_method":
            if node.target in _ELEMENTWISE_METHODS:
                values[node.name] = val(node.args[0])
            elif node.target == "flatten":
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                values[node.name] = _flatten(val(node.args[0]), start, model, where)
            else:
                raise _refuse(model, f"the tensor method .{node.target}() at {where}")
        elif node.op == "output":
            outs = node.args[0]
            outs = outs if isinstance(outs, (tuple, list)) else [outs]
            for o in outs:
                groups.union(val(o).group, FIXED, where)

    missing = [n for n, _ in model.named_parameters() if n not in used]
    if missing:
        raise _refuse(model, f"parameter {missing[0]} is not read by a supported module")
    return _finish(groups, axes, values, gm)


def _flatten(x: _Value, start: Any, model: nn.Module, where: str) -> _Value:
    if start != 1:
        raise _refuse(model, f"a flatten from dim {start} at {where} (only dim 1 is understood)")
    return _Value(x.group, "vec", flat=x.kind == "conv" or x.flat)


def _finish(groups: _Groups, axes, values, gm) -> PermutationSpec:
    roots = {g: groups.find(g) for g in groups.size}
    live = sorted({r for r in roots.values() if r != FIXED})
    renum = {r: i for i, r in enumerate(live)}
    sizes = {renum[r]: groups.size[r] for r in live}
    out_axes: dict[str, list[tuple[int, int, int]]] = {}
    for name, entries in axes.items():
        kept = []
        for ax, g, blk in entries:
            r = groups.find(g)
            if r != FIXED:
                kept.append((ax, renum[r], blk))
        if kept:
            out_axes[name] = kept
    nodes: dict[int, list[tuple[str, int]]] = {i: [] for i in sizes}
    for name, v in values.items():
        r = groups.find(v.group)
        if r == FIXED or v.flat:
            continue
        nodes[renum[r]].append((name, 1 if v.kind == "conv" else -1))
    return PermutationSpec(sizes, out_axes, nodes)


# -- applying permutations ------------------------------------------------------------------
def _permute_axis(w: torch.Tensor, axis: int, perm: torch.Tensor, block: int) -> torch.Tensor:
    if block == 1:
        return w.index_select(axis, perm)
    shape = w.shape
    split = w.reshape(*shape[:axis], perm.numel(), block, *shape[axis + 1:])
    return split.index_select(axis, perm).reshape(shape)


def _permuted(name: str, w: torch.Tensor, spec: PermutationSpec, perms: Mapping[int, Any],
              skip: tuple[int, int] | None = None) -> torch.Tensor:
    """``w`` with every axis of ``spec.axes[name]`` permuted (``skip``: (axis, group) left)."""
    for ax, g, blk in spec.axes.get(name, ()):
        if skip is not None and (ax, g) == skip:
            continue
        p = torch.as_tensor(np.asarray(perms[g]), dtype=torch.long, device=w.device)
        w = _permute_axis(w, ax, p, blk)
    return w


def apply_permutation(model: nn.Module, perms: Mapping[int, Any],
                      spec: PermutationSpec | None = None) -> nn.Module:
    """A deep copy of ``model`` whose unit i of group g is the model's unit ``perms[g][i]``
    (parameters and BatchNorm running statistics alike): the same function."""
    spec = permutation_spec(model) if spec is None else spec
    out = copy.deepcopy(model)
    tensors = {**dict(out.named_parameters()), **dict(out.named_buffers())}
    with torch.no_grad():
        for name in spec.axes:
            t = tensors[name]
            t.copy_(_permuted(name, t.detach(), spec, perms))
    return out


def inner_product(theta_a: Mapping[str, torch.Tensor], theta_b: Mapping[str, torch.Tensor]
                  ) -> float:
    """⟨θ_a, θ_b⟩ = Σ_names Σ θ_a · θ_b in float64 (the weight-matching objective)."""
    return float(sum(torch.sum(theta_a[k].detach().double() * theta_b[k].detach().double())
                     for k in theta_a))


# -- weight matching ------------------------------------------------------------------------
def _unfold(w: torch.Tensor, axis: int, size: int, block: int) -> torch.Tensor:
    """(size, rest): axis moved first, its block folded into the rest."""
    shape = w.shape
    if block > 1:
        w = w.reshape(*shape[:axis], size, block, *shape[axis + 1:])
    return w.movedim(axis, 0).reshape(size, -1)


def _cost(g: int, spec: PermutationSpec, a: Mapping, b: Mapping, perms) -> np.ndarray:
    n = spec.sizes[g]
    cost = torch.zeros(n, n, dtype=torch.float64)
    for name, ax, blk in spec.members(g):
        if name not in a:  # buffers (BN running statistics) follow, they do not vote
            continue
        wb = _permuted(name, b[name], spec, perms, skip=(ax, g))
        cost += _unfold(a[name], ax, n, blk) @ _unfold(wb, ax, n, blk).T
    return cost.numpy()


def weight_matching(spec: PermutationSpec, theta_a: Mapping[str, torch.Tensor],
                    theta_b: Mapping[str, torch.Tensor], max_iter: int = 100, seed: int = 0,
                    progress: bool | None = None) -> tuple[dict[int, np.ndarray], list[float],
                                                           bool]:
    """Git Re-Basin weight matching: coordinate ascent of ⟨θ_a, π(θ_b)⟩ over the groups.

    ``theta_*``: name -> tensor over (at least) the names of ``spec.axes`` and any parameter
    in ``theta_a``. Returns ``(perms, history, converged)``: perms[g] (size,) int arrays,
    ``history`` the objective before the first pass and after each pass (non-decreasing),
    ``converged`` True when the last pass changed no permutation (a fixed point).
    """
    a = {k: v.detach().double().cpu() for k, v in theta_a.items()}
    b = {k: v.detach().double().cpu() for k, v in theta_b.items()}
    perms = {g: np.arange(n) for g, n in spec.sizes.items()}
    rng = np.random.default_rng(seed)

    def objective() -> float:
        return inner_product(a, {k: _permuted(k, v, spec, perms) for k, v in b.items()
                                 if k in a})

    # a group's cost matrix changes only when a group sharing one of its tensors moved: solve
    # only such "dirty" groups (the result is the same as re-solving all of them every pass)
    share = {g: {gg for name, _, _ in spec.members(g) for _, gg, _ in spec.axes[name]}
             for g in spec.groups}
    dirty = set(spec.groups)
    history = [objective()]
    for _ in track(range(max_iter), "weight matching", total=max_iter,
                   disable=True if progress is None and sum(spec.sizes.values()) < 4096
                   else (None if progress is None else not progress)):
        if not dirty:
            break
        for g in (int(x) for x in rng.permutation(spec.groups)):
            if g not in dirty:
                continue
            dirty.discard(g)
            cost = _cost(g, spec, a, b, perms)
            _, cols = linear_sum_assignment(cost, maximize=True)
            rows = np.arange(len(cols))
            old, new = cost[rows, perms[g]].sum(), cost[rows, cols].sum()
            if new > old + 1e-12 * max(1.0, abs(old)) and not np.array_equal(cols, perms[g]):
                perms[g] = cols
                dirty |= share[g] - ({g} if all(
                    sum(gg == g for _, gg, _ in spec.axes[n]) == 1 for n, _, _ in
                    spec.members(g)) else set())
        history.append(objective())
    return perms, history, not dirty


# -- activation matching --------------------------------------------------------------------
def _inputs(data, batch_size: int) -> list[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        return [data[i:i + batch_size] for i in range(0, len(data), batch_size)]
    from lossatlas.core.batching import as_batches

    batches = as_batches(data, batch_size)
    if not isinstance(batches[0].inputs, torch.Tensor):
        raise LossAtlasError("data: activation matching feeds one input tensor to the model; "
                             "pass (X, y) tensors, a dataset of (x, y) pairs or X itself.")
    return [b.inputs for b in batches]


class _Stats:
    """Running sums for the correlation of two (n, C) activation streams."""

    def __init__(self, c: int) -> None:
        self.n = 0
        self.sa = torch.zeros(c, dtype=torch.float64)
        self.sb = torch.zeros(c, dtype=torch.float64)
        self.saa = torch.zeros(c, dtype=torch.float64)
        self.sbb = torch.zeros(c, dtype=torch.float64)
        self.sab = torch.zeros(c, c, dtype=torch.float64)

    def add(self, xa: torch.Tensor, xb: torch.Tensor) -> None:
        xa, xb = xa.double(), xb.double()
        self.n += xa.shape[0]
        self.sa += xa.sum(0)
        self.sb += xb.sum(0)
        self.saa += (xa * xa).sum(0)
        self.sbb += (xb * xb).sum(0)
        self.sab += xa.T @ xb

    def corr(self) -> torch.Tensor:
        n = max(self.n, 1)
        ma, mb = self.sa / n, self.sb / n
        cov = self.sab / n - ma[:, None] * mb[None, :]
        va = (self.saa / n - ma ** 2).clamp_min(0).sqrt()
        vb = (self.sbb / n - mb ** 2).clamp_min(0).sqrt()
        return cov / (va[:, None] * vb[None, :] + 1e-12)


def _rows(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(samples, C) from an activation with channels on ``dim``."""
    return x.movedim(dim, -1).reshape(-1, x.shape[dim])


def _capture(gm: torch.fx.GraphModule, names: set[str], x: torch.Tensor
             ) -> dict[str, torch.Tensor]:
    """The outputs of the traced nodes ``names`` on input ``x``."""
    got: dict[str, torch.Tensor] = {}

    class _Grab(torch.fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.name in names:
                got[n.name] = out.detach()
            return out

    _Grab(gm).run(x)
    return got


@torch.no_grad()
def activation_matching(spec: PermutationSpec, model_a: nn.Module, model_b: nn.Module, data,
                        batch_size: int = 512) -> dict[int, np.ndarray]:
    """Entezari et al. 2022 / Ainsworth et al. Alg. 1: for each group, the permutation that
    maximizes Σ_i Σ_nodes corr(a_i, b_{p_i}), unit correlations of the traced activations over
    the samples (and positions) of ``data``; both models in eval mode."""
    names = {n for lst in spec.nodes.values() for n, _ in lst}
    stats = {(g, n): _Stats(spec.sizes[g]) for g, lst in spec.nodes.items() for n, _ in lst}
    dims = {n: d for lst in spec.nodes.values() for n, d in lst}
    dev_a = next(model_a.parameters()).device
    dev_b = next(model_b.parameters()).device
    with eval_mode(model_a), eval_mode(model_b):
        gm_a, gm_b = _trace(model_a), _trace(model_b)  # in eval mode: F.dropout(training=...)
        xs = _inputs(data, batch_size)
        for x in track(xs, "activation matching", disable=None if len(xs) > 8 else True):
            fa = _capture(gm_a, names, x.to(dev_a))
            fb = _capture(gm_b, names, x.to(dev_b))
            for (_, n), st in stats.items():
                st.add(_rows(fa[n], dims[n]).cpu(), _rows(fb[n], dims[n]).cpu())
    perms = {}
    for g, n in spec.sizes.items():
        corr = sum((stats[(g, name)].corr() for name, _ in spec.nodes[g]),
                   torch.zeros(n, n, dtype=torch.float64))
        _, cols = linear_sum_assignment(corr.numpy(), maximize=True)
        perms[g] = cols
    return perms


# -- the public entry -----------------------------------------------------------------------
@dataclass
class Alignment:
    """How model B was permuted: ``perms`` (group -> unit indices), the ``spec``, the
    ``method``, the weight-matching objective ⟨θ_a, π(θ_b)⟩ ``history`` (before, then after
    each pass), whether it ``converged`` to a fixed point, and the aligned ``model``."""

    model: nn.Module
    perms: dict[int, np.ndarray]
    spec: PermutationSpec
    method: str
    history: list[float] = field(default_factory=list)
    converged: bool = True


def _check_pair(model_a: nn.Module, model_b: nn.Module) -> None:
    for name, m in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(m, nn.Module):
            raise LossAtlasError(f"{name} must be an nn.Module, got {type(m).__name__}; pass "
                                 "the model itself, not its state dict.")
    sa = {k: tuple(v.shape) for k, v in model_a.state_dict().items()}
    sb = {k: tuple(v.shape) for k, v in model_b.state_dict().items()}
    if sa != sb:
        diff = sorted(set(sa.items()) ^ set(sb.items()))[:1]
        raise LossAtlasError(f"model_b differs from model_a in its tensors (first: {diff}); "
                             "align two models of the same architecture.")


def match(model_a: nn.Module, model_b: nn.Module, method: str = "weights", data=None, *,
          max_iter: int = 100, seed: int = 0, batch_size: int = 512) -> Alignment:
    """Find and apply the permutation of ``model_b``'s hidden units that matches ``model_a``;
    see :func:`align` (this returns the :class:`Alignment` record with the model)."""
    if method not in ("weights", "activations"):
        raise LossAtlasError(f'method={method!r} is unknown; use "weights" (Git Re-Basin weight '
                             'matching) or "activations" (with data=).')
    _check_pair(model_a, model_b)
    spec = permutation_spec(model_a)
    if method == "weights":
        theta_a = dict(model_a.named_parameters())
        theta_b = dict(model_b.named_parameters())
        perms, history, converged = weight_matching(spec, theta_a, theta_b, max_iter, seed)
    else:
        if data is None:
            raise LossAtlasError('data is required for method="activations"; pass the training '
                                 'set (or method="weights").')
        perms = activation_matching(spec, model_a, model_b, data, batch_size)
        history, converged = [], True
    return Alignment(apply_permutation(model_b, perms, spec), perms, spec, method, history,
                     converged)


def align(model_a: nn.Module, model_b: nn.Module, method: str = "weights", data=None, *,
          max_iter: int = 100, seed: int = 0) -> nn.Module:
    """A copy of ``model_b`` whose hidden units are permuted to match ``model_a``.

    ``method="weights"``: Git Re-Basin weight matching (Ainsworth et al. 2023), iterated linear
    assignments to a fixed point of ⟨θ_a, π(θ_b)⟩, no data needed (``seed`` orders the
    groups). ``method="activations"``: correlation matching of the activations on ``data``
    (Entezari et al. 2022). The copy computes the same function as ``model_b`` (up to float
    summation order); residual streams share one permutation and BatchNorm running statistics
    move with their units. Neither model is changed.
    """
    return match(model_a, model_b, method, data, max_iter=max_iter, seed=seed).model
