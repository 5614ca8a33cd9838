"""The figure of any saved result, chosen by its kind (``lossatlas plot FILE``).

:func:`draw` writes the figures of a loaded result next to ``base`` (``base-<what>.png``) and
returns their paths. Curves, interpolations and surfaces have their own options in the CLI;
every other kind has one figure set:

| kind | figures |
|---|---|
| hessian_summary | eigenvalues by rank, SLQ density |
| hessian_spectrum, hessian_density | eigenvalues / density |
| second_order_delta, second_order_path | δL histograms / local quadratics |
| connect | train error and loss along the curve and the line |
| trajectory_path | true loss vs loss at the projection |
| mined | the mining history: batch loss, λ and α per step |
| cosine_profile, gaussian_angles, descent_curves | bars / histograms / curves |
| a sweep folder (or its results.jsonl) | every metric and the phase map, mc curves |
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from lossatlas.core.errors import LossAtlasError

__all__ = ["KINDS", "draw", "mining_history"]


def _name(base: Path, what: str) -> Path:
    return base.with_name(f"{base.stem}-{what}.png")


def mining_history(res, path: str | os.PathLike | None = None):
    """A mined direction's optimization history (Li, Li, Zhan 2024, Algorithms 1-2): the batch
    loss per step, with the sampled λ and the schedule α on a second panel."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = np.arange(1, len(res.losses) + 1)
    a1.plot(steps, res.losses, lw=0.8)
    a1.set(xlabel="step", ylabel="batch loss", title=f"{res.algorithm}: loss while mining")
    a2.plot(steps, res.lambdas, ".", ms=2, label="λ sampled")
    a2.plot(steps, res.alphas, lw=1.2, label="α")
    a2.set(xlabel="step", title="λ and its range α")
    a2.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=130)
    return fig


def _one(fn: Callable, what: str) -> Callable[[object, Path], list[Path]]:
    """A drawer writing ``fn(result, path)`` to ``base-<what>.png``."""

    def draw_one(res, base: Path) -> list[Path]:
        p = _name(base, what)
        plt.close(fn(res, p))
        return [p]

    return draw_one


def _summary_figures(res, base: Path) -> list[Path]:
    from lossatlas.plot.hessian import summary_figures

    return summary_figures(res, base)


def _eigenvalues(res, p):
    from lossatlas.plot.hessian import plot_eigenvalues

    return plot_eigenvalues(res, p)


def _density(res, p):
    from lossatlas.plot.hessian import plot_density

    return plot_density(res, p)


def _delta(res, p):
    from lossatlas.plot.hessian import plot_delta

    return plot_delta(res, p)


def _quadratics(res, p):
    from lossatlas.plot.hessian import plot_quadratics

    return plot_quadratics(res, p)


def _connect(res, p):
    from lossatlas.plot.connect import error_and_loss

    return error_and_loss(res, path=p, title=f"mc = {res.mc:+.3g} at t* = {res.t_star:.2f}")


def _fit(res, p):
    from lossatlas.plot.trajectory import plot_fit

    return plot_fit([res], None, p)


def _cosine(res, p):
    from lossatlas.plot.shapes import cosine_bars

    return cosine_bars(res, path=p)


def _angles(res, p):
    from lossatlas.plot.shapes import angle_histograms

    return angle_histograms(res, p)


def _descent(res, p):
    from lossatlas.plot.shapes import descent_curves

    return descent_curves(res, p)


#: kind -> ``fn(result, base) -> [paths]``.
KINDS: dict[str, Callable[[object, Path], list[Path]]] = {
    "hessian_summary": _summary_figures,
    "hessian_spectrum": _one(_eigenvalues, "eigenvalues"),
    "hessian_density": _one(_density, "density"),
    "second_order_delta": _one(_delta, "delta"),
    "second_order_path": _one(_quadratics, "quadratics"),
    "connect": _one(_connect, "connect"),
    "trajectory_path": _one(_fit, "fit"),
    "mined": _one(mining_history, "history"),
    "cosine_profile": _one(_cosine, "cosine"),
    "gaussian_angles": _one(_angles, "angles"),
    "descent_curves": _one(_descent, "descent"),
}


def draw(result, base: str | os.PathLike) -> list[Path]:
    """The figures of ``result`` (any kind in :data:`KINDS`) next to ``base``."""
    kind = getattr(result, "kind", None)
    if kind not in KINDS:
        raise LossAtlasError(
            f"a {kind} result has no figure of its own; draw the result it belongs to "
            f"(kinds with figures: {', '.join(sorted(KINDS))}, curves, surfaces, sweeps)"
        )
    base = Path(base)
    base.parent.mkdir(parents=True, exist_ok=True)
    return KINDS[kind](result, base)
