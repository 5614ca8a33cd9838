"""Trajectory PCA planes and the Fitting Error: scikit-learn's PCA, the direct SVD, streamed ==
in-memory, a hand-computed Fitting Error, orthogonal and idempotent projections, BN buffers."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossatlas as la
from lossatlas.core import memory as M
from lossatlas.core.errors import LossAtlasError
from lossatlas.measurements.trajectory.planes import plan_bytes

os.environ.setdefault("LOSSATLAS_QUIET", "1")


def synthetic(k: int = 12, seed: int = 0, dtype=torch.float64) -> list:
    """A curved, noisy path of k points over two tensors (a low-rank drift plus noise)."""
    g = torch.Generator().manual_seed(seed)
    base = {"a": torch.randn(5, 4, generator=g, dtype=dtype),
            "b": torch.randn(7, generator=g, dtype=dtype)}
    u = {k_: torch.randn(v.shape, generator=g, dtype=dtype) for k_, v in base.items()}
    v = {k_: torch.randn(t.shape, generator=g, dtype=dtype) for k_, t in base.items()}
    pts = []
    for t in range(k):
        s = t / (k - 1)
        pts.append(la.params.Point({
            n: base[n] + 3 * (1 - np.exp(-3 * s)) * u[n] + np.sin(4 * s) * v[n]
            + 0.05 * torch.randn(base[n].shape, generator=g, dtype=dtype) for n in base
        }))
    return pts


def flat(p) -> np.ndarray:
    return la.params.flatten(p).double().numpy()


def assert_same_axis(a: np.ndarray, b: np.ndarray, tol: float) -> None:
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    assert min(np.abs(a - b).max(), np.abs(a + b).max()) < tol


def test_li2018_equals_sklearn_pca_of_the_difference_matrix():
    from sklearn.decomposition import PCA

    pts = synthetic()
    plane = la.trajectory.pca(pts, method="li2018", progress=False)
    M = np.stack([flat(p) - flat(pts[-1]) for p in pts[:-1]])  # Li et al.'s matrix
    ref = PCA(n_components=2).fit(M)
    np.testing.assert_allclose(plane.explained_variance_ratio, ref.explained_variance_ratio_,
                               rtol=1e-10)
    for d, comp in zip(plane.directions, ref.components_):
        assert_same_axis(flat(d), comp, 1e-9)
    assert plane.center_index == len(pts) - 1 and plane.scale == 1.0
    assert list(plane.indices) == list(range(len(pts) - 1))
    np.testing.assert_allclose(np.linalg.norm(flat(plane.d1)), 1.0, rtol=1e-12)


def test_ding2023_equals_sklearn_pca_of_the_slice_and_scales_by_the_center_norm():
    from sklearn.decomposition import PCA

    pts = synthetic()
    plane = la.trajectory.pca(pts, method="ding2023", center=0, slice=(2, 10), progress=False)
    W = np.stack([flat(p) for p in pts[2:10]])
    ref = PCA(n_components=2).fit(W)
    np.testing.assert_allclose(plane.explained_variance_ratio, ref.explained_variance_ratio_,
                               rtol=1e-10)
    wc = np.linalg.norm(flat(pts[0]))
    for d, comp in zip(plane.directions, ref.components_):
        assert_same_axis(flat(d), comp, 1e-9)
        np.testing.assert_allclose(np.linalg.norm(flat(d)), wc, rtol=1e-12)  # Eq. 2
    assert abs(np.dot(flat(plane.d1), flat(plane.d2))) < 1e-9 * wc**2
    assert plane.center_index == 0 and list(plane.indices) == list(range(2, 10))
    torch.testing.assert_close(plane.center["a"], pts[0]["a"])


@pytest.mark.parametrize("centered", [True, False])
def test_gram_route_equals_the_direct_svd(centered):
    pts = synthetic(k=9, seed=3)
    plane = la.trajectory.pca(pts, method="li2018", centered=centered, progress=False)
    X = np.stack([flat(p) - flat(pts[-1]) for p in pts[:-1]])
    if centered:
        X = X - X.mean(axis=0)
    _, s, Vt = np.linalg.svd(X, full_matrices=False)
    np.testing.assert_allclose(plane.explained_variance_ratio, s[:2] ** 2 / np.sum(s**2),
                               rtol=1e-10)
    np.testing.assert_allclose(plane.eigenvalues, (s**2)[: len(plane.eigenvalues)], rtol=1e-9)
    for d, v in zip(plane.directions, Vt[:2]):
        assert_same_axis(flat(d), v, 1e-9)


def test_streamed_from_files_equals_in_memory(tmp_path):
    pts = synthetic(k=11, seed=1)
    files = []
    for i, p in enumerate(pts):
        f = tmp_path / f"ckpt_{i}.pt"
        torch.save({**p, "bn.running_mean": torch.zeros(3)}, f)  # a buffer is not selected
        files.append(f)
    mem = la.trajectory.pca(pts, method="ding2023", center=4, stream=False, progress=False)
    for block in (1, 3, 11):
        st = la.trajectory.pca(files, method="ding2023", center=4, stream=True,
                               block_size=block, progress=False)
        assert st.meta["streamed"] and st.meta["block_size"] == block
        assert st.names == ["a", "b"]
        np.testing.assert_allclose(st.explained_variance_ratio, mem.explained_variance_ratio,
                                   rtol=1e-12)
        for a, b in zip(st.directions, mem.directions):
            np.testing.assert_allclose(flat(a), flat(b), rtol=0, atol=1e-10)
    blocks = la.trajectory.pca(pts, method="ding2023", center=4, stream=True, block_size=2,
                               progress=False)  # no files: blocks of points
    np.testing.assert_allclose(flat(blocks.d2), flat(mem.d2), atol=1e-10)
    # the memory budget alone switches to streaming, with as many rows as it leaves
    room = int((plan_bytes(27, 11, 3) + 100) / (1 - M.HEADROOM))
    auto = la.trajectory.pca(files, method="ding2023", center=4, memory=room, progress=False)
    assert auto.meta["streamed"] and auto.meta["block_size"] == 3
    np.testing.assert_allclose(flat(auto.d1), flat(mem.d1), atol=1e-10)


def test_gram_streamed_equals_dense():
    pts = synthetic(k=7)
    src = la.trajectory.as_source(pts)
    ref = src.vector(0)
    G1 = la.trajectory.gram(src, range(7), ref, progress=False)
    G2 = la.trajectory.gram(src, range(7), ref, stream=True, block_size=2, progress=False)
    X = np.stack([flat(p) - ref for p in pts])
    np.testing.assert_allclose(G1, X @ X.T, rtol=1e-12)
    np.testing.assert_allclose(G2, G1, rtol=1e-12)


# -- projection and fitting error on a small trained run --------------------------------------
def tiny_run(bn: bool = False, epochs: int = 6):
    torch.manual_seed(0)
    X, y = torch.randn(96, 5), torch.randint(0, 3, (96,))
    layers = [nn.Linear(5, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh(),
                                                                          nn.Linear(8, 3)]
    net = nn.Sequential(*layers)
    run = la.train(net, (X, y), epochs=epochs, lr=0.2, batch_size=32, seed=0, progress=False)
    return net, X, y, run


def loss_at(net, X, y, state) -> float:
    """Plain forward pass of ``net`` with ``state`` loaded (restored after)."""
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        net.load_state_dict(state, strict=False)
        net.eval()
        with torch.no_grad():
            return float(F.cross_entropy(net(X), y))
    finally:
        net.load_state_dict(saved)


def test_fitting_error_equals_a_hand_computation():
    net, X, y, run = tiny_run()
    plane = la.trajectory.pca(run, method="ding2023", center=2, progress=False)
    obj = la.Objective(net, (X, y))
    path = la.trajectory.project(obj, plane, run, progress=False)
    names = run.parameter_names
    shapes = [run.checkpoints[0][n].shape for n in names]
    wc = flat(run.checkpoints[2])
    Pm = np.stack([flat(plane.d1), flat(plane.d2)], axis=1) / np.linalg.norm(wc)
    np.testing.assert_allclose(Pm.T @ Pm, np.eye(2), atol=1e-6)
    terms, xs = [], []
    for i in range(len(run)):
        w = flat(run.checkpoints[i])
        wt = wc + Pm @ (Pm.T @ (w - wc))  # w̃ = w_c + PPᵀ(w − w_c)
        xs.append(Pm.T @ (w - wc) / np.linalg.norm(wc))  # coordinates in units of d_i
        chunks = np.split(wt, np.cumsum([int(np.prod(s)) for s in shapes])[:-1])
        state = {n: torch.from_numpy(c.reshape(s)).float() for n, c, s in
                 zip(names, chunks, shapes)}
        lt = loss_at(net, X, y, state)
        lw = loss_at(net, X, y, dict(run.checkpoints[i]))
        terms.append(np.log(lw / lt) ** 2)
    np.testing.assert_allclose(path.fitting_error, np.mean(terms), rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(np.stack([path.x, path.y], 1), np.array(xs), atol=1e-5)
    np.testing.assert_allclose(path.loss, run.train_loss, rtol=1e-5)
    assert path.x[2] == 0 and path.y[2] == 0 and path.loss[2] == path.projected_loss[2]
    assert la.trajectory.fitting_error([1.0, np.e], [np.e, 1.0]) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", ["ding2023", "random"])
def test_projection_is_orthogonal_and_idempotent(kind):
    pts = synthetic(k=8, seed=2)
    plane = la.trajectory.pca(pts, method="ding2023", center=3, progress=False)
    if kind == "random":
        plane = la.trajectory.random_plane(plane, seed=0, ignore=None)
        assert abs(la.params.cosine(plane.d1, plane.d2)) > 1e-4  # not orthogonal
    D = np.stack([flat(plane.d1), flat(plane.d2)], 1)
    for p in pts:
        a, b = la.trajectory.coordinates(p, plane)
        ref = np.linalg.lstsq(D, flat(p) - flat(plane.center), rcond=None)[0]
        np.testing.assert_allclose([a, b], ref, rtol=1e-8, atol=1e-10)
        wt = la.params.axpy(plane.center, [a, b], plane.directions)
        r = flat(p) - flat(wt)
        assert np.abs(D.T @ r).max() < 1e-9 * np.linalg.norm(D) * max(1, np.linalg.norm(r))
        np.testing.assert_allclose(la.trajectory.coordinates(wt, plane), (a, b), atol=1e-10)


def test_batchnorm_checkpoints_use_their_own_buffers():
    net, X, y, run = tiny_run(bn=True, epochs=4)
    plane = la.trajectory.pca(run, method="li2018", progress=False)
    obj = la.Objective(net, (X, y), bn="keep")
    path = la.trajectory.project(obj, plane, run, progress=False)
    assert path.meta["own_buffers"] == len(run) and path.meta["center_buffers"]
    for i in range(len(run)):  # the true loss is the checkpoint's, running stats included
        assert path.loss[i] == pytest.approx(loss_at(net, X, y, run.states[i]), rel=1e-5)
    np.testing.assert_allclose(path.loss, run.train_loss, rtol=1e-5)
    # the model's buffers are not the center's here; the plane objective uses the center's
    run.load_into(net, 0)
    obj0 = la.Objective(net, (X, y), bn="keep")
    path0 = la.trajectory.project(obj0, plane, run, progress=False)
    np.testing.assert_allclose(path0.projected_loss, path.projected_loss, rtol=1e-6)
    s = la.trajectory.surface(obj0, plane, path0, checkpoints=run, resolution=1, progress=False,
                              xspan=(0, 0), yspan=(0, 0), store_directions=False)
    assert s.loss[0, 0] == pytest.approx(path.loss[-1], rel=1e-5)


def test_compare_random_plane_and_surface_span(tmp_path):
    net, X, y, run = tiny_run(epochs=8)
    obj = la.Objective(net, (X, y))
    plane = la.trajectory.pca(run.checkpoints, method="ding2023", progress=False)
    cmp, traj, rand = la.trajectory.compare(obj, plane, run, seeds=(0, 1), progress=False)
    assert cmp.fitting_error == traj.fitting_error and len(rand) == 2
    assert cmp.ratio == pytest.approx(np.median(cmp.random_fitting_errors) / traj.fitting_error)
    np.testing.assert_allclose(rand[0].loss, traj.loss)  # the same true losses
    s = la.trajectory.surface(obj, plane, traj, resolution=5, margin=0.1, progress=False)
    assert s.x[0] < traj.x.min() and s.x[-1] > traj.x.max()
    assert s.y[0] < min(traj.y.min(), 0) and s.y[-1] > traj.y.max()
    for obj_ in (plane, traj, cmp):
        back = la.load(obj_.save(tmp_path / f"{obj_.kind}.h5"))
        assert type(back) is type(obj_)
    back = la.load(tmp_path / "trajectory_plane.h5")
    torch.testing.assert_close(back.d1["0.weight"], plane.d1["0.weight"])
    np.testing.assert_allclose(back.explained_variance_ratio, plane.explained_variance_ratio)
    assert back.method == "ding2023" and back.center_index == plane.center_index
    np.testing.assert_allclose(la.load(tmp_path / "trajectory_path.h5").x, traj.x)


def test_sources_run_folder_slices_and_errors(tmp_path):
    torch.manual_seed(0)
    X, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    run = la.train(net, (X, y), epochs=5, batch_size=16, seed=0, progress=False,
                   out=tmp_path / "run")
    a = la.trajectory.pca(tmp_path / "run", method="ding2023", slice="1:5", center=1,
                          progress=False)
    b = la.trajectory.pca(list(run.checkpoints), method="ding2023", slice=(1, 5), center=1,
                          progress=False)
    c = la.trajectory.pca(run.checkpoints[1:5], method="ding2023", center=0, progress=False)
    for other in (b, c):
        np.testing.assert_allclose(flat(a.d1), flat(other.d1), atol=1e-6)
    assert a.meta["epochs"] == [0, 1, 2, 3, 4, 5] and a.meta["lrs"][0] == 0.1
    with pytest.raises(LossAtlasError, match="method"):
        la.trajectory.pca(run, method="pca")
    with pytest.raises(LossAtlasError, match="slice"):
        la.trajectory.pca(run, slice=(3, 4))
    with pytest.raises(LossAtlasError, match="center"):
        la.trajectory.pca(run, center=17)
    with pytest.raises(LossAtlasError, match="names"):
        la.trajectory.pca(run, names=["nope"])
    with pytest.raises(LossAtlasError, match="two dimensions"):
        la.trajectory.pca([run.checkpoints[0]] * 3, progress=False)
    obj = la.Objective(nn.Linear(4, 2), (X, y))
    with pytest.raises(LossAtlasError, match="other parameters"):
        la.trajectory.project(obj, a, run)


def test_figure_draws_the_path_and_marks(tmp_path):
    from lossatlas.plot import trajectory as TP

    net, X, y, run = tiny_run(epochs=5)
    run.manifest[3]["lr"] = 0.02  # pretend the learning rate dropped at checkpoint 3
    obj = la.Objective(net, (X, y))
    plane = la.trajectory.pca(run, method="ding2023", center=0, progress=False)
    traj = la.trajectory.project(obj, plane, run, progress=False)
    s = la.trajectory.surface(obj, plane, traj, resolution=5, progress=False)
    fig = TP.plot_trajectory(s, traj, plane, tmp_path / "t.png", log=True)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    np.testing.assert_allclose(lines["checkpoints"].get_xdata(), traj.x)
    np.testing.assert_allclose(lines["lr change"].get_xdata(), traj.x[[3, 4]])
    assert list(lines["center"].get_xdata()) == [0] and lines["center"].get_color() == "red"
    r = plane.explained_variance_ratio
    assert f"{100 * r[0]:.1f} %" in ax.get_xlabel() and f"{100 * r[1]:.1f} %" in ax.get_ylabel()
    assert ax.collections, "the loss surface under the path is drawn"
    fig = TP.plot_fit([traj], ["ding"], tmp_path / "f.png")
    (ax,) = fig.axes
    true, projected = ax.get_lines()
    np.testing.assert_allclose(true.get_ydata(), traj.loss)
    np.testing.assert_allclose(projected.get_ydata(), traj.projected_loss)
    assert "fitting error" in projected.get_label() and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "loss"


@pytest.mark.slow
def test_cli_trajectory(tmp_path, saved_figures):
    from typer.testing import CliRunner

    from lossatlas.cli import app

    train, _ = la.datasets.load("digits", train_size=150)
    net = la.zoo.build("mlp", dataset=train, width=8, seed=0)
    la.train(net, train, epochs=4, batch_size=50, seed=0, progress=False, out=tmp_path / "run")
    out = tmp_path / "traj"
    r = CliRunner().invoke(app, ["trajectory", str(tmp_path / "run"), "--method", "li2018",
                                 "--slice", "0:5", "--center", "-1", "--resolution", "5",
                                 "--compare", "1", "--width", "8", "--data-arg",
                                 "train_size=150", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "fitting error" in r.output and "explained variance" in r.output
    for f in ("plane.h5", "path.h5", "surface.h5", "random-0.h5"):
        assert (out / f).exists(), f
    path = la.load(out / "path.h5")
    lines = {ln.get_label(): ln for ln in saved_figures["trajectory.png"].axes[0].get_lines()}
    np.testing.assert_allclose(lines["checkpoints"].get_xdata(), path.x)  # the path drawn
    true, *projected = saved_figures["fit.png"].axes[0].get_lines()
    np.testing.assert_allclose(true.get_ydata(), path.loss)
    assert len(projected) >= 1  # the loss at the projection onto each plane
    panels = [ax for ax in saved_figures["comparison.png"].axes if ax.get_lines()]
    assert len(panels) == 2  # the PCA plane and one random plane (--compare 1)
    plane = la.load(out / "plane.h5")
    assert plane.method == "li2018" and plane.center_index == 4
    r = CliRunner().invoke(app, ["trajectory", str(tmp_path / "run"), "--method", "pca"])
    assert r.exit_code != 0
    # a parameter subset: only the matching tensors enter the plane
    sub = tmp_path / "sub"
    r = CliRunner().invoke(app, ["trajectory", str(tmp_path / "run"), "--exclude", "*.bias",
                                 "--resolution", "3", "--width", "8", "--data-arg",
                                 "train_size=150", "--out", str(sub)])
    assert r.exit_code == 0, r.output
    names = la.load(sub / "plane.h5").names
    assert names and not any(n.endswith(".bias") for n in names)
    r = CliRunner().invoke(app, ["trajectory", str(tmp_path / "run"), "--include", "nothing*",
                                 "--width", "8", "--data-arg", "train_size=150"])
    assert r.exit_code != 0 and "--include" in str(r.exception)
