"""Sharpness tracked during training: λ_max of the full-data training loss every K updates.

Cohen, Kaur, Li, Kolter, Talwalkar 2021 ("Gradient descent on neural networks typically occurs
at the edge of stability") watch ``λ_max(H)`` rise during full-batch GD (progressive
sharpening) and settle near ``2/η``. :class:`Sharpness` measures it from any training loop:

* every ``every`` optimizer updates (and at step 0), the top ``k`` eigenvalues of the Hessian
  of the exact full-data mean loss (:func:`la.hessian.eigs`, Lanczos, relative residual
  ``tol``), warm-started from the previous measurement's Ritz vectors (their sum is the start
  vector): once training moves slowly a measurement costs a few Hessian-vector products;
* with Adam/AdamW, the preconditioned sharpness ``λ_max(P⁻¹H)`` (Cohen et al. 2022, see
  :mod:`lossatlas.measurements.track.preconditioner`), warm-started the same way;
* with ``trace=True``, ``tr H`` by XTrace with ``trace_products`` products.

One row per measurement goes to the run's table ``sharpness`` (``sharpness.csv`` in the run
folder; ``run.track("sharpness")`` reads it back): ``step`` (optimizer updates applied to the
measured weights), ``epoch``, ``lr``, ``lambda_max``, ``lambda_1`` .. ``lambda_k`` (largest
first), ``residual`` (of λ_max), ``two_over_lr`` (2/η), ``threshold`` (the optimizer's
stability threshold for λ_max: 2/η for GD, (2+2β)/η for heavy-ball momentum β, NaN for Adam),
``products`` (Hessian-vector products of this measurement), ``seconds``, ``train_loss`` and,
when measured, ``precond_lambda_max``, ``precond_threshold``, ``precond_products``, ``trace``,
``trace_error``, ``trace_products``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from lossatlas.core.errors import LossAtlasError
from lossatlas.measurements.track.preconditioner import (
    ScaledOperator,
    adam_preconditioner,
    adam_threshold,
    is_adam,
)

__all__ = ["Sharpness", "stability_threshold"]


def stability_threshold(optimizer, lr: float) -> float:
    """The largest stable ``λ_max(H)`` of the optimizer on a quadratic: ``2/η`` for GD,
    ``(2 + 2β)/η`` for PyTorch's SGD with momentum β (heavy ball, no dampening, not Nesterov);
    NaN when it is not a plain function of ``λ_max(H)`` (Adam: see the preconditioned one).
    With L2 weight decay ``wd`` the iteration sees ``H + wd·I``: compare ``λ_max + wd``."""
    if not lr or not lr > 0:
        return math.nan
    if optimizer is None:
        return 2.0 / lr
    if isinstance(optimizer, torch.optim.SGD):
        g = optimizer.param_groups[0]
        beta = float(g.get("momentum", 0.0))
        if beta and (g.get("nesterov") or float(g.get("dampening", 0.0))):
            return math.nan
        return (2 + 2 * beta) / lr
    return math.nan


class Sharpness:
    """Callback: λ_max (top ``k``) of the full-data training loss every ``every`` updates.

    ``data``: the training set to measure on (default: the one :func:`lossatlas.train` trains
    on; required with a :class:`la.Recorder` in one's own loop); ``batch_size``:
    samples per forward pass of the measurement (the value does not depend on it); ``loss``:
    as for :class:`~lossatlas.Objective` (default: the training loss). ``preconditioned``:
    ``"auto"`` (when the optimizer is Adam/AdamW), True or False. ``warm``: start Lanczos from
    the previous Ritz vectors (False: a fresh random start every time).

    >>> import torch, lossatlas as la
    >>> X, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> run = la.train(torch.nn.Linear(4, 3), (X, y), epochs=2, batch_size=64, momentum=0,
    ...                callbacks=[la.track.Sharpness(every=1)], progress=False)
    >>> run.track("sharpness")["step"].tolist()
    [0.0, 1.0, 2.0]
    """

    name = "sharpness"

    def __init__(
        self,
        every: int = 10,
        k: int = 1,
        *,
        data: Any = None,
        batch_size: int | None = 2048,
        loss: Any = None,
        tol: float = 5e-4,
        preconditioned: bool | str = "auto",
        trace: bool = False,
        trace_products: int = 20,
        warm: bool = True,
        params: str | Sequence[str] | None = None,
        seed: int = 0,
    ):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise LossAtlasError(f"every={every!r} must be a positive number of steps, e.g. 10")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise LossAtlasError(f"k={k!r} must be a positive integer, e.g. 1")
        if preconditioned not in ("auto", True, False):
            raise LossAtlasError(f"preconditioned={preconditioned!r}: use 'auto', True or False")
        if not 0 < tol < 1:
            raise LossAtlasError(f"tol={tol!r} must be in (0, 1), e.g. 1e-3")
        self.every, self.k, self.data, self.batch_size = every, k, data, batch_size
        self.loss, self.tol, self.preconditioned = loss, tol, preconditioned
        self.trace, self.trace_products, self.warm = trace, int(trace_products), warm
        self.params, self.seed = params, seed
        # (k, dim) Ritz vectors of the last two measurements (H, then P^{-1/2} H P^{-1/2})
        self._prev: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        self._prev_pre: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        self._checked = False
        self.rows: list[dict] = []

    # -- the hook ------------------------------------------------------------------------
    def on_step(self, recorder, model, optimizer, *, step: int, lr: float | None = None,
                data: Any = None, loss: Any = None, **_: Any) -> None:
        """Measure when ``step % every == 0`` and log the row into ``recorder``."""
        if step % self.every:
            return
        row = self.measure(model, optimizer, step=step, lr=lr, data=data, loss=loss)
        if recorder is not None:
            recorder.log(self.name, row)

    def _objective(self, model, data, loss):
        from lossatlas.core.objective import Objective

        data = self.data if self.data is not None else data
        if data is None:
            raise LossAtlasError(
                "Sharpness has no data to measure on; pass data=train_set to la.track.Sharpness"
            )
        loss = self.loss if self.loss is not None else (loss or "cross_entropy")
        obj = Objective(model, data, loss=loss, batch_size=self.batch_size,
                        check=not self._checked)
        self._checked = True
        return obj

    def measure(self, model, optimizer=None, *, step: int = 0, lr: float | None = None,
                data: Any = None, loss: Any = None) -> dict:
        """One row of the table at the model's current weights (see the module docstring)."""
        from lossatlas.measurements.hessian import HessianOperator, eigs, trace_estimate

        t0 = time.perf_counter()
        if lr is None and optimizer is not None:
            lr = float(optimizer.param_groups[0]["lr"])
        obj = self._objective(model, data, loss)
        op = HessianOperator(obj, params=self.params)
        spec = eigs(obj, self.k, "LA", self.tol, operator=op, seed=self.seed + step,
                    v0=self._start(*self._prev))
        vecs = torch.stack([op.flatten(v) for v in spec.vectors]).to(torch.float64)
        self._prev = (vecs, self._prev[0])
        lams = spec.values[::-1]  # largest first
        row: dict[str, Any] = {"step": int(step), "lr": lr, "lambda_max": float(lams[0])}
        for i, lam in enumerate(lams, 1):
            row[f"lambda_{i}"] = float(lam)
        row["residual"] = float(spec.residuals[-1])
        row["two_over_lr"] = 2.0 / lr if lr else math.nan
        row["threshold"] = stability_threshold(optimizer, lr) if lr else math.nan
        row["products"] = int(spec.matvecs)
        if self._use_preconditioner(optimizer):
            row.update(self._preconditioned(obj, op, model, optimizer, lr, step))
        if self.trace:
            est = trace_estimate(obj, self.trace_products, operator=op, seed=self.seed + step)
            row.update(trace=est.value, trace_error=est.error, trace_products=est.products)
        op.release()
        # one functional pass (no working copy of the model)
        row["train_loss"] = obj.loss(private_copy=False)
        row["seconds"] = time.perf_counter() - t0
        self.rows.append(row)
        return row

    def _start(self, prev: torch.Tensor | None, older: torch.Tensor | None) -> torch.Tensor | None:
        """The sum of the last Ritz vectors, each extrapolated one measurement ahead
        (``2v_t − v_{t−1}``, signs aligned) when the one before is known: the top eigenvector
        drifts smoothly while training moves slowly, so the extrapolated start needs fewer
        products per measurement (figure in benchmarks/README.md)."""
        if prev is None or not self.warm:
            return None
        if older is None or older.shape != prev.shape:
            return prev.sum(0)
        sign = torch.sign((older * prev).sum(1, keepdim=True))
        return (2 * prev - sign * older).sum(0)

    def _use_preconditioner(self, optimizer) -> bool:
        if self.preconditioned == "auto":
            return optimizer is not None and is_adam(optimizer)
        if self.preconditioned and (optimizer is None or not is_adam(optimizer)):
            raise LossAtlasError(
                "preconditioned=True needs an Adam/AdamW optimizer; pass preconditioned='auto'"
            )
        return bool(self.preconditioned)

    def _preconditioned(self, obj, op, model, optimizer, lr, step) -> dict:
        from lossatlas.measurements.hessian import eigs

        out = {"precond_threshold": adam_threshold(optimizer, lr) if lr else math.nan}
        p = adam_preconditioner(optimizer, model, op.names)
        if p is None:  # before the first update
            return {**out, "precond_lambda_max": math.nan, "precond_products": 0}
        sop = ScaledOperator(op, p.rsqrt())
        spec = eigs(obj, 1, "LA", self.tol, operator=sop, seed=self.seed + step + 1,
                    v0=self._start(*self._prev_pre))
        vecs = torch.stack([op.flatten(v) for v in spec.vectors]).to(torch.float64)
        self._prev_pre = (vecs, self._prev_pre[0])
        return {**out, "precond_lambda_max": float(spec.values[-1]),
                "precond_products": int(spec.matvecs)}


