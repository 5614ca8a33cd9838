"""ParaView export: a surface as a VTK XML PolyData (``.vtp``) file, written directly (no VTK).

The grid becomes points (x[i], y[j], z) with z the loss (or log10 loss, optionally clipped at
``zmax``, as in Li et al.'s ``h52vtp``), joined into quads; the loss is also attached as point
data so that ParaView can colour by it. Points not computed yet are left out, with their quads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lossatlas.core.errors import LossAtlasError

__all__ = ["to_vtp"]


def _ascii(a: np.ndarray, fmt: str) -> str:
    return " ".join(fmt % v for v in np.asarray(a).reshape(-1))


def to_vtp(result, path: str | os.PathLike, *, log: bool = False, zmax: float | None = None,
           metric: str = "loss") -> Path:
    """Write a surface to ``path`` (``.vtp``). Returns the path."""
    if getattr(result, "kind", None) != "surface":
        raise LossAtlasError("to_vtp needs a surface result (la.surface or a surface file)")
    z = np.array(getattr(result, metric), dtype=float)
    ok = np.isfinite(z)
    if result.done is not None:
        ok &= np.asarray(result.done, dtype=bool)
    if zmax is not None:
        z = np.minimum(z, zmax)
    if log:
        z = np.log10(np.clip(z, 1e-12, None))
    nx, ny = z.shape
    ids = -np.ones((nx, ny), dtype=np.int64)
    ids[ok] = np.arange(int(ok.sum()))
    X, Y = np.meshgrid(result.x, result.y, indexing="ij")
    pts = np.stack([X[ok], Y[ok], z[ok]], axis=1)
    quads = []
    for i in range(nx - 1):
        for j in range(ny - 1):
            q = (ids[i, j], ids[i + 1, j], ids[i + 1, j + 1], ids[i, j + 1])
            if min(q) >= 0:
                quads.append(q)
    quads = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
    offsets = 4 * np.arange(1, len(quads) + 1)
    name = f"log10_{metric}" if log else metric
    xml = f"""<?xml version="1.0"?>
<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian">
  <PolyData>
    <Piece NumberOfPoints="{len(pts)}" NumberOfVerts="0" NumberOfLines="0" NumberOfStrips="0" NumberOfPolys="{len(quads)}">
      <PointData Scalars="{name}">
        <DataArray type="Float32" Name="{name}" format="ascii">{_ascii(pts[:, 2], "%.7g")}</DataArray>
      </PointData>
      <Points>
        <DataArray type="Float32" NumberOfComponents="3" format="ascii">{_ascii(pts, "%.7g")}</DataArray>
      </Points>
      <Polys>
        <DataArray type="Int64" Name="connectivity" format="ascii">{_ascii(quads, "%d")}</DataArray>
        <DataArray type="Int64" Name="offsets" format="ascii">{_ascii(offsets, "%d")}</DataArray>
      </Polys>
    </Piece>
  </PolyData>
</VTKFile>
"""  # noqa: E501
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(xml)
    return path
