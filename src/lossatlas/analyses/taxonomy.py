"""Phases of a loss landscape (Yang et al. 2021, Sect. 3.1, Fig. 1).

Two transitions split the load × temperature plane into four phases:

* **local** (the first transition, seen in the Hessian and the training loss): a *large*
  training loss goes with large λ_max and trace (*locally sharp*, Phases I/II); a *small*
  training loss with small ones (*locally flat*, Phases III/IV).
* **global** (the second transition, seen in mode connectivity ``mc``): ``mc < 0`` is a barrier
  between independently trained models (*poorly connected*, Phases I/III); ``mc ≈ 0`` (IV) or
  ``mc > 0`` (II: the curve is lower than its ends because the ends are not minima) is *well
  connected*. So one rule serves both rows: poorly connected iff ``mc < −mc_tol``.
* Phase IV splits by CKA similarity into IV-A (small) and IV-B (large: "globally nice"), a
  smooth crossover rather than a sharp transition.

======  ==============  ================  ================
phase   train loss      mc                CKA
======  ==============  ================  ================
I       large           < −mc_tol         –
II      large           ≥ −mc_tol (> 0)   –
III     small           < −mc_tol         –
IV-A    small           ≥ −mc_tol (≈ 0)   < cka
IV-B    small           ≥ −mc_tol (≈ 0)   ≥ cka
======  ==============  ================  ================

"Large" and "small" need numbers that the paper leaves to its figures, so every threshold is
an explicit, adjustable field of :class:`Thresholds`, and the returned :class:`Phase` carries
the evidence (each metric, its threshold and the verdict). The local side is read from the
training loss by default (``local="loss"``); ``local="hessian"`` uses λ_max (and the trace when
given) instead, ``"both"`` requires the two to agree (a disagreement is labelled by the loss
and flagged in the evidence). Hessian values depend on the model's scale, so their thresholds
default to None: :func:`classify_table` then takes the geometric midpoint of the table's range.

>>> classify({"train_loss": 0.001, "mc": -0.5, "cka": 0.95}).label
'IV-B'
>>> classify({"train_loss": 1.2, "mc": -30.0}).label
'I'
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lossatlas.core.errors import LossAtlasError

__all__ = ["LABELS", "Phase", "Thresholds", "classify", "classify_table"]

#: The labels :func:`classify` returns; "IV" when CKA is missing, "n/a" when the train loss /
#: error or mc is missing.
LABELS = ("I", "II", "III", "IV-A", "IV-B")


@dataclass(frozen=True)
class Thresholds:
    """The numbers behind every verdict (all adjustable).

    train_loss : a mean train cross-entropy below this is *small* (fitted). Default 0.1: the
        paper's Fig. 2b shows a more-than-tenfold drop across the local transition, from
        ≳ 0.1 in Phases I/II to ≲ 0.01 in III/IV.
    train_error : used when ``train_loss`` is missing: a train error (percent) below this is
        small. Default 1.0 %.
    mc : the tolerance around zero for ``mc`` in the units of the mc column (percent of train
        error by default, range [−100, 100]): poorly connected iff ``mc < −mc``. Default 2.0.
    cka : Phase IV-B iff CKA ≥ this (Fig. 2f's crossover). Default 0.9.
    hessian_max, hessian_trace : λ_max / trace above this is *sharp* (None: the geometric
        midpoint of the table in :func:`classify_table`; single rows then skip the Hessian).
    local : how the local (sharp/flat) side is decided: "loss", "hessian" or "both".
    """

    train_loss: float = 0.1
    train_error: float = 1.0
    mc: float = 2.0
    cka: float = 0.9
    hessian_max: float | None = None
    hessian_trace: float | None = None
    local: str = "loss"

    def __post_init__(self):
        if self.local not in ("loss", "hessian", "both"):
            raise LossAtlasError(f'local={self.local!r} is unknown; use "loss", "hessian" or '
                                 '"both"')
        for name in ("train_loss", "train_error", "mc", "cka"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise LossAtlasError(f"Thresholds.{name}={v!r} must be a finite number >= 0")


@dataclass
class Phase:
    """A phase label with its evidence.

    label : "I", "II", "III", "IV-A", "IV-B" ("IV" if CKA is missing, "n/a" if the loss /
        error or mc is missing).
    local : "sharp" | "flat" | "unknown"; connectivity: "poor" | "good" | "unknown";
    evidence : metric -> {"value", "threshold", "verdict"} plus "notes" (disagreements).
    """

    label: str
    local: str = "unknown"
    connectivity: str = "unknown"
    evidence: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.label

    def describe(self) -> str:
        """One line: the label and the words of Sect. 3.1."""
        words = {"I": "globally poorly-connected, locally sharp",
                 "II": "globally well-connected, locally sharp",
                 "III": "globally poorly-connected, locally flat",
                 "IV": "globally well-connected, locally flat",
                 "IV-A": "globally well-connected, locally flat, dissimilar models",
                 "IV-B": "globally nice (well-connected, similar models), locally flat"}
        return f"Phase {self.label}: {words.get(self.label, 'undetermined')}"


def _num(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v


def classify(metrics: Mapping[str, Any], thresholds: Thresholds | None = None,
             **overrides) -> Phase:
    """The phase of one cell from its metrics (Yang et al. Sect. 3.1).

    ``metrics`` keys (missing or NaN values are skipped): ``train_loss`` (mean cross-entropy),
    ``train_error`` (percent), ``mc`` (mode connectivity, percent of train error by default),
    ``cka`` (0..1), ``hessian_max`` (λ_max), ``hessian_trace``. ``overrides`` replace fields of
    ``thresholds`` (e.g. ``classify(row, cka=0.8)``).
    """
    th = thresholds or Thresholds()
    if overrides:
        th = dataclasses.replace(th, **overrides)
    ev: dict[str, Any] = {"notes": []}

    # local: from the loss (or the error), and from the Hessian
    loss_side = None
    tl, te = _num(metrics.get("train_loss")), _num(metrics.get("train_error"))
    if math.isfinite(tl):
        loss_side = "flat" if tl < th.train_loss else "sharp"
        ev["train_loss"] = {"value": tl, "threshold": th.train_loss,
                            "verdict": "small" if loss_side == "flat" else "large"}
    elif math.isfinite(te):
        loss_side = "flat" if te < th.train_error else "sharp"
        ev["train_error"] = {"value": te, "threshold": th.train_error,
                             "verdict": "small" if loss_side == "flat" else "large"}
    hess_votes = []
    for key, thr in (("hessian_max", th.hessian_max), ("hessian_trace", th.hessian_trace)):
        v = _num(metrics.get(key))
        if math.isfinite(v) and thr is not None:
            side = "sharp" if v > thr else "flat"
            hess_votes.append(side)
            ev[key] = {"value": v, "threshold": thr, "verdict": side}
    hess_side = None
    if hess_votes:
        hess_side = hess_votes[0] if len(set(hess_votes)) == 1 else None
        if hess_side is None:
            ev["notes"].append("lambda_max and trace disagree; the Hessian casts no vote")
    if th.local == "hessian":
        local = hess_side or loss_side
        if hess_side is None and loss_side is not None:
            ev["notes"].append("no Hessian verdict; the local side comes from the train loss")
    else:
        local = loss_side or (hess_side if th.local == "both" else None)
    if loss_side and hess_side and loss_side != hess_side:
        ev["notes"].append(f"train loss says locally {loss_side}, the Hessian says {hess_side}")

    # global: mode connectivity
    mc = _num(metrics.get("mc"))
    conn = None
    if math.isfinite(mc):
        conn = "poor" if mc < -th.mc else "good"
        ev["mc"] = {"value": mc, "threshold": -th.mc,
                    "verdict": "barrier (poorly connected)" if conn == "poor" else
                    ("near zero (well connected)" if mc <= th.mc else
                     "positive (well connected, ends not minima)")}
        if conn == "good" and local == "flat" and mc > th.mc:
            ev["notes"].append("mc > 0 with a small train loss: the ends are not minima of the "
                               "error the curve found; check the curve training")

    cka = _num(metrics.get("cka"))
    if math.isfinite(cka):
        ev["cka"] = {"value": cka, "threshold": th.cka,
                     "verdict": "large" if cka >= th.cka else "small"}
    if not ev["notes"]:
        del ev["notes"]

    if local is None or conn is None:
        missing = [k for k, ok in (("train_loss/train_error", local), ("mc", conn)) if ok is None]
        ev["missing"] = missing
        return Phase("n/a", local or "unknown", conn or "unknown", ev)
    if local == "sharp":
        label = "I" if conn == "poor" else "II"
    elif conn == "poor":
        label = "III"
    elif math.isfinite(cka):
        label = "IV-B" if cka >= th.cka else "IV-A"
    else:
        label = "IV"
    return Phase(label, local, conn, ev)


def _rows(table) -> list[Mapping[str, Any]]:
    """Rows of a table: a list of dicts, a dict of columns, or a pandas DataFrame."""
    if hasattr(table, "to_dict") and hasattr(table, "columns"):
        return list(table.to_dict("records"))
    if isinstance(table, Mapping):
        cols = {k: list(v) for k, v in table.items()}
        n = {len(v) for v in cols.values()}
        if len(n) > 1:
            raise LossAtlasError("table: the columns have different lengths; pass equal columns")
        return [{k: v[i] for k, v in cols.items()} for i in range(n.pop() if n else 0)]
    if isinstance(table, Iterable):
        rows = list(table)
        if not all(isinstance(r, Mapping) for r in rows):
            raise LossAtlasError("table: every row must be a dict of column -> value")
        return rows
    raise LossAtlasError(
        f"table of type {type(table).__name__} is not understood; pass a list of dicts, a dict "
        "of columns or a pandas DataFrame"
    )


def _midpoint(values: Sequence[float]) -> float | None:
    """Geometric midpoint sqrt(min·max) of the positive finite values (None if too few)."""
    v = [x for x in values if math.isfinite(x) and x > 0]
    if len(v) < 2 or min(v) == max(v):
        return None
    return math.sqrt(min(v) * max(v))


def classify_table(table, thresholds: Thresholds | None = None, **overrides) -> list[Phase]:
    """:func:`classify` for every row of a sweep table (one row per load × temperature cell).

    Columns as in :func:`classify` (``train_loss``, ``train_error``, ``mc``, ``cka``,
    ``hessian_max``, ``hessian_trace``; others are ignored). Hessian thresholds left None are
    set to the geometric midpoint of the column over the table (sharp above it), recorded in
    each row's evidence.
    """
    th = thresholds or Thresholds()
    if overrides:
        th = dataclasses.replace(th, **overrides)
    rows = _rows(table)
    fill = {}
    for key in ("hessian_max", "hessian_trace"):
        if getattr(th, key) is None:
            mid = _midpoint([_num(r.get(key)) for r in rows])
            if mid is not None:
                fill[key] = mid
    th = dataclasses.replace(th, **fill) if fill else th
    return [classify(r, th) for r in rows]
