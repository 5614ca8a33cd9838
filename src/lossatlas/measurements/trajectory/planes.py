"""PCA planes of a training trajectory (Li et al. 2018, App. B.2; Ding, Li, Huang 2023, Sec. 3.1).

``method="li2018"``: PCA of the matrix M whose rows are θ_i − θ_c for the slice's checkpoints
other than the center θ_c (by default the slice's last checkpoint: Li et al.'s θ_n). Like their
reference code, which hands M to scikit-learn's ``PCA``, the rows are **mean-centered** before
the decomposition (``centered=False`` gives the uncentered SVD of M instead). The directions are
the unit principal axes p₁, p₂ (coordinates in parameter-space distance; ``scale=`` changes it).

``method="ding2023"``: PCA of the slice w_m, ..., w_{m+n} centered at its mean w̄ (all of its
checkpoints), directions d_i = ‖w_center‖·p_i (their Eq. 2), with any checkpoint as the center.
(The paper divides the sum of n+1 checkpoints by n; we use the mean.)

Both go through the k×k Gram matrix of the rows instead of the k×D data matrix: with
G = X Xᵀ of the rows x_j = θ_j − θ_c (subtracting θ_c first keeps float64 precision), the
centered Gram is Gc = J G J (J = I − 11ᵀ/k), Gc = U Λ Uᵀ, and the principal axes are
p_i = Xᵀ J u_i / √λ_i, explained-variance ratios λ_i / Σ λ.

Memory: the plan asks the budget of :mod:`lossatlas.core.memory` (``memory=``,
``la.memory.limit``, ``LOSSATLAS_MEMORY``) like every other measurement. In memory the work
holds the k rows plus :data:`WORK_ROWS` float64 checkpoints (the reference, the center, one
checkpoint being read and its float64 copy, the two axes, the temporaries of the center's
norm) and four k×k matrices (the Gram, its centered copy,
``eigh``'s work). When that exceeds the budget the work is streamed: checkpoint files (a run
folder, ``.pt`` files) are memory-mapped and read in coordinate chunks worth b checkpoints,
G = Σ_chunks A Aᵀ and the axes chunk by chunk, two passes over the data; other sources hold a
block of b checkpoints while loading the rest one at a time (about k²/(2b) loads). Streamed,
b rows replace the k (b: as many as the budget leaves, or ``block_size``). When not even one
row fits, one sentence says how much is needed and how to get it.

Signs: p_i is oriented so that the trajectory moves toward +p_i from the slice's first to its
last checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lossatlas.core import memory as M
from lossatlas.core import params as P
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.progress import track
from lossatlas.measurements.trajectory.source import Source, as_source
from lossatlas.store import results as store

__all__ = ["METHODS", "WORK_ROWS", "Plane", "gram", "pca", "plan_bytes", "resolve_slice"]

METHODS = ("li2018", "ding2023")
WORK_ROWS = 8  # float64 checkpoints held beside the k (or b) rows: see the module docstring
_HINTS = "pass names= a subset of the parameters or a shorter slice="


@store.result("trajectory_plane")
@dataclass
class Plane:
    """A plane through ``center`` spanned by ``d1``, ``d2`` (Points over ``names``).

    ``explained_variance_ratio`` (2,): the share of the (centered) trajectory variance along
    each axis; ``eigenvalues`` (r,): every nonzero eigenvalue of the centered Gram, descending;
    ``scale``: d_i = scale·p_i with ‖p_i‖ = 1; ``indices``: the checkpoints that entered the
    PCA; ``center_index``: the checkpoint at the center (indices into the input sequence);
    ``meta``: provenance (method, slice, epochs and learning rates of the input, streaming).
    """

    center: P.Point
    d1: P.Point
    d2: P.Point
    explained_variance_ratio: np.ndarray
    method: str = "ding2023"
    center_index: int = -1
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    eigenvalues: np.ndarray = field(default_factory=lambda: np.zeros(0))
    scale: float = 1.0
    meta: dict = field(default_factory=dict)

    @property
    def directions(self) -> list[P.Point]:
        return [self.d1, self.d2]

    @property
    def names(self) -> list[str]:
        return list(self.center)


def resolve_slice(slice_: Any, n: int) -> range:
    """Indices of ``slice_`` = ``(m, n)`` (Python's m:n, None for open ends), a ``slice`` or
    None (everything) into a sequence of ``n`` checkpoints; at least two."""
    if slice_ is None:
        sl = slice(None)
    elif isinstance(slice_, slice):
        sl = slice_
    elif isinstance(slice_, str):
        parts = slice_.split(":")
        if len(parts) != 2:
            raise LossAtlasError(f"slice={slice_!r} must look like M:N (either may be empty)")
        try:
            sl = slice(*(int(p) if p.strip() else None for p in parts))
        except ValueError:
            raise LossAtlasError(f"slice={slice_!r} must look like M:N with integers") from None
    else:
        try:
            m, e = slice_
        except (TypeError, ValueError):
            raise LossAtlasError(f"slice={slice_!r} must be a pair (m, n) of checkpoint "
                                 "indices (Python's m:n)") from None
        sl = slice(m, e)
    rng = range(n)[sl]
    if len(rng) < 2:
        raise LossAtlasError(
            f"slice={slice_!r} selects {len(rng)} of the {n} checkpoints; a plane needs at "
            "least two (three for two nonzero components)"
        )
    return rng


def _index(k: int | None, n: int, default: int, name: str) -> int:
    if k is None:
        return default
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not -n <= k < n:
        raise LossAtlasError(f"{name}={k!r} must be a checkpoint index in [-{n}, {n - 1}]")
    return int(k) % n


def plan_bytes(dim: int, k: int, rows: int) -> int:
    """Bytes the PCA of ``k`` checkpoints over ``dim`` parameters holds with ``rows`` float64
    checkpoint rows at once (k in memory, b streamed): the rows, :data:`WORK_ROWS` more, and
    four k×k float64 matrices."""
    return 8 * dim * (rows + WORK_ROWS) + 4 * 8 * k * k


def _plan(src: Source, k: int, memory: str | float | None, stream: bool | None,
          block_size: int | None) -> tuple[bool, int, int]:
    """(streamed, rows held, budget): in memory when the k rows fit the budget (or
    ``stream=False``), else streamed with as many rows as the budget leaves (or
    ``block_size``); the one sentence of :func:`lossatlas.core.memory.too_large` when even
    one row does not fit."""
    have = M.budget(memory)
    spend = M.usable(have)
    if block_size is not None and (isinstance(block_size, bool)
                                   or not isinstance(block_size, (int, np.integer))
                                   or block_size < 1):
        raise LossAtlasError(f"block_size={block_size!r} must be a positive int")
    what = f"the PCA of {k} checkpoints over {src.dim:,} parameters"
    if stream is None:
        stream = block_size is not None or plan_bytes(src.dim, k, k) > spend
    if not stream:
        need = plan_bytes(src.dim, k, k)
        if need > spend:
            raise M.too_large(f"{what} in memory (stream=False)", need / (1 - M.HEADROOM),
                              have, "pass stream=None to stream it from the checkpoints")
        return False, k, have
    if block_size is None:
        block_size = int(max(1, min(k, (spend - plan_bytes(src.dim, k, 0)) // (8 * src.dim))))
    rows = min(int(block_size), k)
    need = plan_bytes(src.dim, k, rows)
    if need > spend:
        least = plan_bytes(src.dim, k, 1)
        if least <= spend:  # only a block_size= given can get here
            raise M.too_large(f"{what} with block_size={block_size}", need / (1 - M.HEADROOM),
                              have, "pass a smaller block_size= or leave it out")
        raise M.too_large(f"{what} (streamed, one checkpoint at a time)",
                          least / (1 - M.HEADROOM), have, _HINTS)
    return True, rows, have


def _maps(src: Source, indices: Sequence[int]) -> list | None:
    """Memory-mapped flat views of the checkpoints (None unless every one maps)."""
    maps = []
    for i in indices:
        m = src.mapped(i)
        if m is None:
            return None
        maps.append(m)
    return maps


def _chunks(src: Source, maps: list, ref: np.ndarray, block_size: int, what: str,
            progress: bool):
    """Yield (lo, hi, A) with A[j] = (x_j − ref)[lo:hi], reading each mapped checkpoint's
    coordinates lo..hi−1 (chunks of block_size·D/k coordinates: block_size checkpoints' worth)."""
    k = len(maps)
    chunk = max(1, block_size * src.dim // k)
    A = np.empty((k, min(chunk, src.dim)))
    for lo in track(range(0, src.dim, chunk), what, disable=not progress or None):
        hi = min(lo + chunk, src.dim)
        w = hi - lo
        for a, m in enumerate(maps):
            src.read(m, lo, hi, A[a, :w])
        A[:, :w] -= ref[lo:hi]
        yield lo, hi, A[:, :w]


def gram(src: Source, indices: Sequence[int], ref: np.ndarray, *, stream: bool = False,
         block_size: int = 8, progress: bool = True) -> np.ndarray:
    """G[a, b] = (x_a − ref)ᵀ(x_b − ref) over the checkpoints ``indices``.

    In memory: one (k, D) matrix and one product. Streamed from files: the checkpoints are
    memory-mapped and read in coordinate chunks of ``block_size`` checkpoints' worth
    (G = Σ_chunks A Aᵀ; every byte read once). Streamed otherwise: a block of ``block_size``
    checkpoints is held while each later one is loaded (about k²/(2·block_size) loads). Peak
    memory of both streamed routes: the Gram plus about block_size + 1 checkpoints.

    Args:
        src: the checkpoints (a :class:`~lossatlas.measurements.trajectory.source.Source`).
        indices: the k checkpoints, indices into ``src``.
        ref: (D,) the reference subtracted from every row (the plane's center, for precision).
        stream: stream instead of holding the (k, D) matrix.
        block_size: checkpoints per streamed block.
        progress: show a progress bar.

    Returns:
        G, float64 of shape (k, k).
    """
    k = len(indices)
    if not stream:
        X = np.empty((k, src.dim))
        for a, i in enumerate(track(indices, "reading checkpoints", disable=not progress or None)):
            X[a] = src.vector(i)
            X[a] -= ref
        return X @ X.T
    G = np.zeros((k, k))
    maps = _maps(src, indices)
    if maps is not None:
        for _, _, A in _chunks(src, maps, ref, block_size, f"Gram of {k} checkpoints", progress):
            G += A @ A.T
        return G
    for s in track(range(0, k, block_size), f"Gram of {k} checkpoints (blocks)",
                   disable=not progress or None):
        e = min(s + block_size, k)
        A = np.empty((e - s, src.dim))
        for a in range(s, e):
            A[a - s] = src.vector(indices[a])
            A[a - s] -= ref
        G[s:e, s:e] = A @ A.T
        for b in range(e, k):
            x = src.vector(indices[b])
            x -= ref
            G[s:e, b] = A @ x
            G[b, s:e] = G[s:e, b]
        del A
    return G


def _combine(src: Source, indices: Sequence[int], ref: np.ndarray, C: np.ndarray, *,
             stream: bool, block_size: int, progress: bool) -> np.ndarray:
    """Rows Σ_j C[j, i] (x_j − ref) for each column i of C, shape (C.shape[1], D); streamed
    from mapped files in chunks when possible, else one checkpoint in memory at a time."""
    out = np.zeros((C.shape[1], src.dim))
    maps = _maps(src, indices) if stream else None
    if maps is not None:
        for lo, hi, A in _chunks(src, maps, ref, block_size, "principal axes", progress):
            out[:, lo:hi] = C.T @ A
        return out
    for j, i in enumerate(track(indices, "principal axes", disable=not progress or None)):
        x = src.vector(i)
        x -= ref
        for a in range(C.shape[1]):
            if C[j, a] != 0:
                out[a] += C[j, a] * x
    return out


def _to_point(vec: np.ndarray, like: P.Point) -> P.Point:
    """A Point shaped like ``like`` over ``vec``'s memory (copied only to change the dtype)."""
    import torch

    out, j = {}, 0
    for k, v in like.items():
        n = v.numel()
        out[k] = torch.from_numpy(vec[j:j + n]).reshape(v.shape).to(v.dtype)
        j += n
    return P.Point(out)


def pca(
    checkpoints: Any,
    method: str = "ding2023",
    center: int | None = None,
    slice: Any = None,
    names: Sequence[str] | None = None,
    *,
    centered: bool = True,
    scale: str | float | None = None,
    stream: bool | None = None,
    memory: str | float | None = None,
    block_size: int | None = None,
    progress: bool = True,
) -> Plane:
    """The PCA plane of a trajectory slice (see the module docstring for the two methods).

    Args:
        checkpoints: a Run, a run folder, ``run.checkpoints``, a list of points / state dicts
            or of ``.pt`` files.
        method: ``"ding2023"`` or ``"li2018"``.
        center: index of the center checkpoint in ``checkpoints``; None: the slice's last.
        slice: ``(m, n)``: checkpoints m..n−1 (Python's m:n; Ding's w_m..w_{m+n} is
            ``(m, m + n + 1)``); None: all.
        names: the parameters; None: the run's trainable ones.
        centered: mean-center the rows before the decomposition (False: li2018's uncentered
            SVD).
        scale: ``"unit"`` (d_i = p_i, li2018's default), ``"center"`` (d_i = ‖w_center‖·p_i,
            ding2023's) or a positive number.
        stream: stream the Gram from the checkpoints; None: when the slice does not fit the
            memory budget.
        memory: the budget (bytes or ``"4GB"``); None: :func:`lossatlas.core.memory.budget`
            (``la.memory.limit``, ``LOSSATLAS_MEMORY``, a share of the free memory).
        block_size: rows held while streaming; None: as many as the budget leaves.
        progress: show progress bars.

    Returns:
        A :class:`Plane`: ``center``, ``d1``, ``d2`` (Points), ``explained_variance_ratio`` (2,),
        the Gram's nonzero ``eigenvalues``, ``indices`` and ``center_index``.

    Raises:
        LossAtlasError: an unknown ``method`` or ``scale``, a slice that leaves fewer than two
            checkpoints beside the center, checkpoints that span fewer than two dimensions, or
            a budget that does not hold one checkpoint row beside the work (one sentence
            saying how much is needed).

    >>> import torch, lossatlas as la
    >>> pts = [la.params.Point(w=torch.tensor([float(t), t * t / 4, 1.0])) for t in range(5)]
    >>> plane = la.trajectory.pca(pts, method="ding2023", progress=False)
    >>> round(float(plane.explained_variance_ratio.sum()), 6)
    1.0
    """
    if method not in METHODS:
        raise LossAtlasError(f"method={method!r} is unknown; use one of {list(METHODS)}")
    src = as_source(checkpoints, names)
    n = len(src)
    rng = resolve_slice(slice, n)
    c = _index(center, n, rng[-1], "center")
    rows = [i for i in rng if i != c] if method == "li2018" else list(rng)
    if len(rows) < 2:
        raise LossAtlasError(f"slice={slice!r} leaves {len(rows)} checkpoint(s) beside the "
                             "center; widen the slice")
    streamed, block, have = _plan(src, len(rows), memory, stream, block_size)
    center_pt = src.point(c)
    ref = src.vector(c)
    G = gram(src, rows, ref, stream=streamed, block_size=block, progress=progress)
    k = len(rows)
    J = np.eye(k) - 1.0 / k if centered else np.eye(k)
    Gc = J @ G @ J
    Gc = (Gc + Gc.T) / 2
    lam, U = np.linalg.eigh(Gc)
    order = np.argsort(lam)[::-1]
    lam, U = np.clip(lam[order], 0.0, None), U[:, order]
    tol = max(lam[0], 0.0) * k * np.finfo(float).eps * 10
    keep = lam > tol
    if int(keep.sum()) < 2:
        raise LossAtlasError(
            f"the {k} checkpoints of the slice span fewer than two dimensions (eigenvalues "
            f"{lam[:3].tolist()}); pass a longer slice or a trajectory that moves"
        )
    C = J @ U[:, :2] / np.sqrt(lam[:2])  # p_i = Xᵀ J u_i / √λ_i, X rows x_j − ref
    coords = (J @ U[:, :2]) * np.sqrt(lam[:2])  # centered coordinates of the rows
    first, last = rows.index(rng[0]) if rng[0] in rows else 0, len(rows) - 1
    signs = np.where(coords[last] - coords[first] < 0, -1.0, 1.0)
    C = C * signs
    p1, p2 = _combine(src, rows, ref, C, stream=streamed, block_size=block,
                      progress=progress)
    if scale is None:
        scale = "unit" if method == "li2018" else "center"
    if scale == "unit":
        s = 1.0
    elif scale == "center":
        s = float(P.norm(center_pt))
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0:
        s = float(scale)
    else:
        raise LossAtlasError(f'scale={scale!r} must be "unit", "center" or a positive number')
    ratio = lam[:2] / lam.sum()
    infos = [src.info(i) for i in range(n)]
    p1 *= s  # in place: the axes become the directions without another copy
    p2 *= s
    d1, d2 = _to_point(p1, center_pt), _to_point(p2, center_pt)
    for d, i in ((d1, 0), (d2, 1)):
        d.meta = {"kind": f"pca:{method}", "component": i + 1,
                  "explained_variance_ratio": float(ratio[i]), "scale": s}
    center_pt = P.Point(center_pt.clone(), meta=dict(center_pt.meta))
    meta = {
        "method": method, "centered": bool(centered), "slice": [rng.start, rng.stop],
        "num_checkpoints": n, "dim": src.dim, "names": list(src.names),
        "streamed": bool(streamed), "block_size": int(block), "memory_budget": int(have),
        "memory_plan": plan_bytes(src.dim, k, block), "center_hash":
        P.hash_point(center_pt), "center_epoch": infos[c].get("epoch"),
        "epochs": [e.get("epoch") for e in infos], "lrs": [e.get("lr") for e in infos],
        "scale_kind": scale if isinstance(scale, str) else "number",
        "cosine_d1_d2": float(np.dot(p1, p2) / math.sqrt(np.dot(p1, p1) * np.dot(p2, p2))),
    }
    return Plane(center=center_pt, d1=d1, d2=d2, explained_variance_ratio=ratio,
                 method=method, center_index=c, indices=np.asarray(rows, dtype=np.int64),
                 eigenvalues=lam[keep], scale=s, meta=meta)
