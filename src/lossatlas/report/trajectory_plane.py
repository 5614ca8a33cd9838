"""A training run on its PCA plane (Li et al. 2018; Ding et al. 2023): the plane, the path
projected onto it with its Fitting Error, the loss surface around it and their figures, with
random filter-normalized planes through the same center for comparison. Shared by
``lossatlas trajectory`` and the atlas's trajectory section."""

from __future__ import annotations

from pathlib import Path

__all__ = ["analyse"]


def analyse(obj, run, out: Path, *, method: str = "ding2023", center: int | None = None,
            slice_: str | None = None, resolution: int = 31, xspan=None, yspan=None,
            margin: float = 0.2, compare: int = 0, log: bool = True,
            progress: bool = True) -> dict:
    """Plane, projection, surface and figures for ``run`` (shared by the CLI and the demo).
    Returns a summary dict (paths and numbers)."""
    import lossatlas as la
    from lossatlas.plot import trajectory as TP

    out.mkdir(parents=True, exist_ok=True)
    plane = la.trajectory.pca(run, method=method, center=center, slice=slice_,
                              names=obj.names, progress=progress)
    plane.save(out / "plane.h5")
    traj = la.trajectory.project(obj, plane, run, progress=progress)
    traj.save(out / "path.h5")
    surf = la.trajectory.surface(obj, plane, traj, checkpoints=run, resolution=resolution,
                                 xspan=xspan, yspan=yspan, margin=margin,
                                 path=out / "surface.h5", progress=progress)
    figs = [out / "trajectory.png", out / "fit.png"]
    TP.plot_trajectory(surf, traj, plane, figs[0], log=log)
    fits, labels = [traj], [f"{method} plane"]
    summary = {"plane": plane, "trajectory": traj, "surface": surf, "figures": figs}
    if compare:
        panels = [(surf, traj, plane)]
        errs = []
        for s in range(compare):
            rp = la.trajectory.random_plane(plane, seed=2 * s)
            rt = la.trajectory.project(obj, rp, run, progress=progress)
            rt.save(out / f"random-{s}.h5")
            errs.append(rt.fitting_error)
            if s == 0:
                rs = la.trajectory.surface(obj, rp, rt, checkpoints=run, resolution=resolution,
                                           margin=margin, path=out / "random-surface.h5",
                                           progress=progress)
                panels.append((rs, rt, rp))
                fits.append(rt)
                labels.append("random FN plane")
        figs.append(out / "comparison.png")
        TP.plot_comparison(panels, figs[-1], log=log)
        summary["random_fitting_errors"] = errs
    TP.plot_fit(fits, labels, figs[1])
    return summary
