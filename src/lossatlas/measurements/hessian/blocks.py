"""Block-wise Hessian spectra and their heterogeneity (Zhang, Chen, Ding, Li, Sun, Luo 2024,
"Why Transformers need Adam: a Hessian perspective").

A *block* is the parameters one module owns directly (a layer's weight and bias); its Hessian
block ``H[b, b]`` is the curvature with the other parameters held fixed. Each block gets a
*type* from a pattern table (glob patterns over the module name, case-insensitive, first match
wins; the user's table ``types=`` is tried before :data:`BLOCK_TYPES`), then from the module's
class (``nn.Embedding`` → embedding, normalization layers → norm, convolutions → conv, other
``nn.Linear`` → mlp), and the last Linear/Conv of the model not matched by a pattern is the
output layer.

For every block: the SLQ density (:func:`la.hessian.density`) and the top eigenvalue
(:func:`lossatlas.measurements.hessian.eigs`). Heterogeneity: the Jensen–Shannon distance
``JS(p, q) = √(½ KL(p‖m) + ½ KL(q‖m))``, ``m = ½(p + q)``, base 2 (0 = the same spectrum,
1 = disjoint supports), between every two blocks' densities on one common grid with one
common broadening (Zhang et al. compare the block spectra of a model this way: CNNs have
similar blocks, Transformers very different ones).

>>> import torch, lossatlas as la
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> [(b.name, b.type) for b in la.hessian.blocks_of(model)]
[('0', 'mlp'), ('2', 'output')]
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from lossatlas.core.errors import LossAtlasError
from lossatlas.core.progress import track
from lossatlas.store.results import result

__all__ = ["BLOCK_TYPES", "Block", "BlockSpectra", "block_spectra", "blocks_of"]

#: Block type -> glob patterns over module names (Hugging Face, nanoGPT and torchvision names).
BLOCK_TYPES: dict[str, tuple[str, ...]] = {
    "embedding": ("*embed*", "*wte", "*wpe", "*tok_emb*", "*pos_emb*", "*shared"),
    "attention q/k": ("*q_proj", "*k_proj", "*query", "*key", "*.wq", "*.wk", "*q_lin",
                      "*k_lin"),
    "attention v/o": ("*v_proj", "*o_proj", "*out_proj", "*value", "*.wv", "*.wo",
                      "*attention.output.dense", "*attn.c_proj", "*v_lin", "*out_lin"),
    "attention qkv (fused)": ("*c_attn", "*qkv*", "*in_proj*"),
    "norm": ("*norm*", "*ln_*", "*.ln?", "ln?", "*.ln", "*bn*", "*layernorm*"),
    "output": ("*lm_head", "*classifier", "*head", "*fc_out", "*score"),
    "mlp": ("*mlp*", "*ffn*", "*intermediate*", "*fc?", "*c_fc", "*fc"),
}

_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
          *(c for c in (getattr(nn, "RMSNorm", None),) if c is not None))


@dataclass
class Block:
    """A module's own parameters: ``name`` (module path), ``type``, ``params`` (full names)."""

    name: str
    type: str
    params: list[str]
    size: int


def _match(name: str, table: Mapping[str, Sequence[str]]) -> str | None:
    low = name.lower()
    for kind, pats in table.items():
        if any(fnmatch.fnmatchcase(low, p.lower()) for p in pats):
            return kind
    return None


def blocks_of(model: nn.Module, types: Mapping[str, Sequence[str]] | None = None,
              names: Sequence[str] | None = None) -> list[Block]:
    """The model's blocks in module order, typed (see the module docstring); ``names`` keeps
    only those parameters (e.g. an Objective's ``obj.names``)."""
    keep = set(names) if names is not None else None
    table = {**dict(types or {}), **{k: v for k, v in BLOCK_TYPES.items()
                                     if k not in (types or {})}}
    found: list[tuple[Block, nn.Module, bool]] = []
    for mname, mod in model.named_modules():
        own = [f"{mname}.{p}" if mname else p for p, t in mod.named_parameters(recurse=False)
               if t.requires_grad]
        own = [p for p in own if keep is None or p in keep]
        if not own:
            continue
        size = sum(model.get_parameter(p).numel() for p in own)
        kind = _match(mname or type(mod).__name__, table)
        matched = kind is not None
        if kind is None:
            kind = ("embedding" if isinstance(mod, nn.Embedding) else
                    "norm" if isinstance(mod, _NORMS) else
                    "attention qkv (fused)" if isinstance(mod, nn.MultiheadAttention) else
                    "conv" if isinstance(mod, nn.modules.conv._ConvNd) else
                    "mlp" if isinstance(mod, nn.Linear) else "other")
        found.append((Block(mname or "(root)", kind, own, size), mod, matched))
    if not found:
        raise LossAtlasError("the model has no trainable parameters to split into blocks")
    last = [i for i, (_, m, matched) in enumerate(found)
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and not matched]
    if last and not any(b.type == "output" for b, _, _ in found):
        found[last[-1]][0].type = "output"
    return [b for b, _, _ in found]


@result("hessian_blocks")
@dataclass
class BlockSpectra:
    """Per block: ``names``, ``types``, ``sizes`` (n,), ``lambda_max`` (n,), ``trace`` (n,, the
    SLQ estimate), ``density`` (n, bins) on the common ``grid`` (bins,) (each integrates to 1);
    ``js`` (n, n) the Jensen–Shannon distances; ``matvecs`` products used in all."""

    names: list
    types: list
    sizes: np.ndarray
    lambda_max: np.ndarray
    trace: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    js: np.ndarray
    sigma: float = 0.0
    steps: int = 0
    matvecs: int = 0
    seconds: float = 0.0
    params: list = field(default_factory=list)

    def by_type(self) -> list[dict]:
        """One row per block type: blocks, parameters, largest and median λ_max, and the mean
        JS distance between its blocks and the other types' blocks."""
        rows, types = [], list(dict.fromkeys(self.types))
        t = np.array(self.types)
        for kind in types:
            sel = t == kind
            other = ~sel
            rows.append({
                "type": kind, "blocks": int(sel.sum()), "parameters": int(self.sizes[sel].sum()),
                "lambda_max": float(self.lambda_max[sel].max()),
                "median_lambda_max": float(np.median(self.lambda_max[sel])),
                "js_to_others": float(self.js[np.ix_(sel, other)].mean()) if other.any()
                else float("nan"),
            })
        return rows

    def table(self) -> str:
        """:meth:`by_type` as aligned text."""
        head = (f"{'block type':<22} {'blocks':>6} {'params':>9} {'λ_max':>11} "
                f"{'median λ_max':>13} {'JS to others':>12}")
        lines = [head]
        for r in self.by_type():
            lines.append(f"{r['type']:<22} {r['blocks']:>6} {r['parameters']:>9} "
                         f"{r['lambda_max']:>11.4g} {r['median_lambda_max']:>13.4g} "
                         f"{r['js_to_others']:>12.3f}")
        return "\n".join(lines)


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon distance (base 2, in [0, 1]) of two densities on one grid (each
    normalized here). Each ratio p/m is clipped to [0, 2], its exact range: where a density's
    tail underflows to denormals, m = (p + q)/2 can round to 0 and scipy's ``jensenshannon``
    returns inf for two nearly equal spectra.

    >>> round(js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])), 6)
    1.0
    >>> js_distance(np.array([1.0, 5e-324]), np.array([1.0, 0.0]))
    0.0
    """
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        on = a > 0
        with np.errstate(divide="ignore", over="ignore"):
            ratio = np.clip(a[on] / m[on], 0.0, 2.0)
        return float(np.sum(a[on] * np.log2(ratio)))

    return float(np.sqrt(max(0.5 * kl(p) + 0.5 * kl(q), 0.0)))


def block_spectra(
    obj,
    *,
    types: Mapping[str, Sequence[str]] | None = None,
    steps: int = 40,
    n_v: int = 1,
    bins: int = 1000,
    sigma: float | None = None,
    tol: float = 1e-3,
    point=None,
    seed: int = 0,
) -> BlockSpectra:
    """SLQ density (``steps`` Lanczos steps, ``n_v`` vectors) and λ_max of every block of
    ``obj``'s model, the JS distances between the block densities, and the blocks' types.

    The common grid spans all blocks' Ritz values; ``sigma`` (default: that span / steps)
    broadens every block alike, so distances compare shapes *and* scales. A block of fewer than
    3 parameters gets its exact eigenvalues, equally weighted.

    Args:
        obj: the :class:`~lossatlas.core.objective.Objective`; its ``names`` limit the blocks.
        types: block types tried before :data:`BLOCK_TYPES` (type → glob patterns over module
            names).
        steps: Lanczos steps per block, an integer ``>= 3`` (capped at the block's size).
        n_v: start vectors per block.
        bins: points of the common grid.
        sigma: the common broadening; None: the span of all Ritz values / ``steps``.
        tol: the relative residual of each block's λ_max (see :func:`eigs`).
        point: where the Hessian is taken; None: the objective's center.
        seed: seeds the start vectors.

    Returns:
        A :class:`BlockSpectra`: per block ``names``, ``types``, ``sizes``, ``lambda_max``,
        ``trace`` (n,) and ``density`` (n, bins) on ``grid``; ``js`` (n, n); ``matvecs`` in all.

    Raises:
        LossAtlasError: ``steps`` below 3, or a model without trainable parameters.
    """
    from lossatlas.measurements.hessian.eigenpairs import eigs
    from lossatlas.measurements.hessian.operator import HessianOperator
    from lossatlas.measurements.hessian.slq import broaden, density

    if not isinstance(steps, int) or steps < 3:
        raise LossAtlasError(f"steps={steps!r} must be an integer >= 3, e.g. 40")
    t0 = time.perf_counter()
    blocks = blocks_of(obj.model, types, obj.names)
    nodes, weights, lam, tr, products = [], [], [], [], 0
    for b in track(blocks, "block spectra"):
        op = HessianOperator(obj, point, b.params)
        if op.dim < 3:  # too small for Lanczos: the block's exact eigenvalues, equal weights
            w = np.linalg.eigvalsh(op.dense().cpu().numpy())
            vals, wts, top, trace = w[None], np.full((1, len(w)), 1 / len(w)), w[-1], w.sum()
        else:
            d = density(obj, min(steps, op.dim), n_v, operator=op, seed=seed)
            vals, wts, trace = d.ritz_values, d.ritz_weights, d.trace(op.dim)
            top = eigs(obj, 1, "LA", tol, operator=op, seed=seed).top
        op.release()
        products += op.matvecs
        pad = steps - vals.shape[1]
        nodes.append(np.pad(vals, ((0, 0), (0, pad)), mode="edge"))
        weights.append(np.pad(wts, ((0, 0), (0, pad))))
        lam.append(float(top))
        tr.append(float(trace))
    allnodes = np.concatenate(nodes, axis=1)
    span = float(allnodes.max() - allnodes.min())
    sigma = sigma if sigma is not None else max(span, 1e-12) / steps
    grid = None
    dens = []
    for nd, wt in zip(nodes, weights):
        # one grid for all: broaden over the union's range by padding with zero-weight nodes
        nd2 = np.concatenate([nd, np.full((nd.shape[0], 2), [allnodes.min(), allnodes.max()])],
                             axis=1)
        wt2 = np.concatenate([wt, np.zeros((wt.shape[0], 2))], axis=1)
        g, p, _ = broaden(nd2, wt2, sigma, bins)
        grid = g if grid is None else grid
        dens.append(p)
    D = np.array(dens)
    n = len(blocks)
    js = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            js[i, j] = js[j, i] = js_distance(D[i], D[j])
    return BlockSpectra(
        [b.name for b in blocks], [b.type for b in blocks], np.array([b.size for b in blocks]),
        np.array(lam), np.array(tr), grid, D, js, float(sigma), steps, products,
        time.perf_counter() - t0, [p for b in blocks for p in b.params])
