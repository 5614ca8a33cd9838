"""Tracked tables of a run: one CSV per tracker (``sharpness.csv``), rewritten atomically.

A table is a list of rows (dicts of numbers); columns are the union of the rows' keys in
first-seen order, missing values written empty and read back as NaN.

>>> rows = [{"step": 0, "lambda_max": 1.5}, {"step": 10, "lambda_max": 2.0, "trace": 3.0}]
>>> columns(rows)["trace"].tolist()
[nan, 3.0]
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lossatlas.store import atomic

__all__ = ["append_row", "columns", "read_table"]


def _keys(rows: Sequence[Mapping]) -> list[str]:
    keys: dict[str, None] = {}
    for r in rows:
        keys.update(dict.fromkeys(r))
    return list(keys)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


def append_row(path: str | os.PathLike, rows: Sequence[Mapping]) -> None:
    """Write all ``rows`` (the table so far) to ``path``, atomically (tmp file + rename)."""
    path = Path(path)
    keys = _keys(rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for r in rows:
        w.writerow([_cell(r.get(k)) for k in keys])
    atomic.write_text(path, buf.getvalue())


def read_table(path: str | os.PathLike) -> list[dict]:
    """Rows of a table written by :func:`append_row` (numbers as floats, empty cells NaN)."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return [{k: _number(v) for k, v in row.items()} for row in reader]


def _number(v: str | None):
    if v is None or v == "":
        return math.nan
    try:
        return float(v)
    except ValueError:
        return v


def columns(rows: Sequence[Mapping]) -> dict[str, np.ndarray]:
    """Rows -> ``{column: float array}`` (NaN where a row lacks the column)."""
    out = {}
    for k in _keys(rows):
        vals = [r.get(k) for r in rows]
        out[k] = np.array([math.nan if v is None else float(v) for v in vals], dtype=float)
    return out
