"""Curves, surfaces, interpolation: exact values, scale invariance, resumable files."""

import copy
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import warnings

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossatlas as la
from lossatlas.core.errors import LossAtlasError
from lossatlas.measurements.landscape import engine

os.environ.setdefault("LOSSATLAS_QUIET", "1")


def problem(bn: bool = False, n: int = 120, seed: int = 0):
    """A small classifier (with BatchNorm when ``bn``) and data; deterministic in ``seed``."""
    torch.manual_seed(seed)
    X = torch.randn(n, 1, 6, 6)
    y = torch.randint(0, 4, (n,))
    if bn:
        net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                            nn.Linear(48, 4))
        with torch.no_grad():  # give BN non-trivial running statistics
            net.train()
            net(X)
            net.eval()
    else:
        net = nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 4))
    return net, X, y


def hand_loss(net, X, y, point):
    """L at ``point`` computed independently: a copy of the model loaded with the point."""
    m = copy.deepcopy(net).eval()
    with torch.no_grad():
        for k, p in m.named_parameters():
            p.copy_(point[k])
        out = m(X)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).sum()) / len(y)


def hand_loss_recalibrated(net, X, y, point, batch_size):
    m = copy.deepcopy(net)
    with torch.no_grad():
        for k, p in m.named_parameters():
            p.copy_(point[k])
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.reset_running_stats()
                mod.momentum = None
        m.train()
        for i in range(0, len(X), batch_size):
            m(X[i:i + batch_size])
        m.eval()
        out = m(X)
    return float(F.cross_entropy(out, y)), float((out.argmax(1) == y).sum()) / len(y)


@pytest.mark.parametrize("bn,policy,fast", [
    (False, "keep", True), (False, "keep", False), (True, "keep", True), (True, "keep", False),
    (True, "recalibrate", True),
])
def test_surface_equals_hand_computation(bn, policy, fast):
    net, X, y = problem(bn)
    obj = la.Objective(net, (X, y), batch_size=50, bn=policy)
    d1 = la.directions.gaussian(net, seed=0, ignore=None)
    d2 = la.directions.gaussian(net, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = la.surface(obj, d1, d2, xspan=(-1, 0.5), yspan=(-0.5, 1), xres=4, yres=5,
                       fast="affine" if fast else False)
    assert s.loss.shape == (4, 5) and s.accuracy.shape == (4, 5) and s.done.all()
    assert s.meta["engine"] == ("affine" if fast else "inplace")
    theta = la.params.of(net)
    for i, a in enumerate(s.x):
        for j, b in enumerate(s.y):
            point = {k: theta[k] + a * d1[k] + b * d2[k] for k in theta}
            if policy == "keep":
                loss, acc = hand_loss(net, X, y, point)
            else:
                loss, acc = hand_loss_recalibrated(net, X, y, point, 50)
            assert s.loss[i, j] == pytest.approx(loss, rel=1e-5), (i, j)
            assert s.accuracy[i, j] == pytest.approx(acc, abs=1e-9)
    assert s.meta["bn"] == policy
    # the user's model was not touched
    assert all(torch.equal(v, theta[k]) for k, v in la.params.of(net).items())


def test_curve_and_interpolation_values():
    net, X, y = problem()
    obj = la.Objective(net, (X, y))
    d = la.directions.gaussian(net, seed=3)
    c = la.curve(obj, d, span=(-2, 2), points=9)
    theta = la.params.of(net)
    for a, v in zip(c.x, c.loss):
        assert v == pytest.approx(hand_loss(net, X, y, theta + a * d)[0], rel=1e-5)
    b = theta + la.directions.gaussian(net, seed=4, ignore=None)
    i = la.interpolate(obj, theta, b, span=(-0.5, 1.5), points=5)
    np.testing.assert_allclose(i.x, [-0.5, 0, 0.5, 1, 1.5])
    assert i.loss[1] == pytest.approx(obj.loss(theta), rel=1e-6)
    assert i.loss[3] == pytest.approx(obj.loss(b), rel=1e-5)
    assert i.kind == "interpolation"


def test_scale_invariance_of_filter_normalized_surface():
    """ReLU net: layer 1 scaled by c, layer 2 by 1/c computes the same function; the
    filter-normalized surface (same seeds) is unchanged, the unnormalized one is not."""
    net, X, y = problem()
    scaled = copy.deepcopy(net)
    c = 7.0
    with torch.no_grad():
        scaled[1].weight.mul_(c)
        scaled[1].bias.mul_(c)
        scaled[3].weight.div_(c)

    def surf(model, norm):
        obj = la.Objective(model, (X, y))
        d1, d2 = (la.directions.gaussian(model, norm=norm, seed=s) for s in (0, 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return la.surface(obj, d1, d2, resolution=5).loss

    np.testing.assert_allclose(surf(scaled, "filter"), surf(net, "filter"), rtol=1e-5)
    assert np.abs(surf(scaled, "none") - surf(net, "none")).max() > 1e-2


def test_orthogonality_warning_and_option():
    net, X, y = problem()
    obj = la.Objective(net, (X, y))
    d1 = la.directions.gaussian(net, seed=0)
    d2 = d1 + 0.5 * la.directions.gaussian(net, seed=1)
    with pytest.warns(UserWarning, match="orthogonal"):
        la.surface(obj, d1, d2, resolution=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = la.surface(obj, d1, d2, resolution=2, orthogonalize=True)
    assert abs(la.params.cosine(d1, s.directions[1])) < 1e-6
    assert s.meta["orthogonalized"] is True and s.meta["cosine"] > 0.5


class _Stop(Exception):  # noqa: N818
    pass


def _stopper(k, exc=_Stop):
    def cb(done, total):
        if done == k:
            raise exc()
    return cb


def _datasets(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("xcoordinates", "ycoordinates", "train_loss", "train_acc",
                                      "done")}, f.attrs["signature"]


def _same_file(a, b):
    da, sa = _datasets(a)
    db, sb = _datasets(b)
    assert sa == sb
    for k in da:
        np.testing.assert_array_equal(da[k], db[k], err_msg=k)


@pytest.mark.parametrize("exc", [_Stop, KeyboardInterrupt])
def test_interrupted_run_resumes_to_the_same_file(tmp_path, exc, monkeypatch):
    # the engine is the rule's in both runs: a timing race may choose differently in two runs
    monkeypatch.setattr(engine, "race_engines", lambda eng, coeffs: None)
    net, X, y = problem(bn=True)
    obj = la.Objective(net, (X, y), batch_size=64)
    d1, d2 = (la.directions.gaussian(net, seed=s) for s in (0, 1))
    kw = dict(resolution=6, chunk_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = la.surface(obj, d1, d2, path=tmp_path / "full.h5", **kw)
        part = tmp_path / "part.h5"
        with pytest.raises(exc):
            la.surface(obj, d1, d2, path=part, callback=_stopper(3, exc), **kw)
        assert la.load(part).done.sum() == 12  # 3 chunks of 4 points kept
        seen = []
        resumed = la.surface(obj, d1, d2, path=part, callback=lambda d, t: seen.append(t), **kw)
    assert seen[-1] == 6  # only the 24 missing points, in 6 chunks
    assert resumed.complete
    _same_file(tmp_path / "full.h5", part)
    np.testing.assert_array_equal(full.loss, resumed.loss)


def test_finished_file_is_not_recomputed(tmp_path):
    net, X, y = problem()
    obj = la.Objective(net, (X, y))
    d = la.directions.gaussian(net, seed=0)
    c1 = la.curve(obj, d, points=7, path=tmp_path / "c.h5")
    c2 = la.curve(obj, d, points=7, path=tmp_path / "c.h5", callback=_stopper(1))
    np.testing.assert_array_equal(c1.loss, c2.loss)


_SCRIPT = """
import os, signal, sys, warnings
sys.path.insert(0, {tests!r})
warnings.simplefilter("ignore")
import lossatlas as la
from test_landscape import problem
net, X, y = problem(bn=True)
obj = la.Objective(net, (X, y), batch_size=64)
d1, d2 = (la.directions.gaussian(net, seed=s) for s in (0, 1))
def cb(done, total):
    if done == 2:
        os.kill(os.getpid(), signal.SIGKILL)
la.surface(obj, d1, d2, resolution=6, chunk_size=4, path={path!r}, callback=cb)
"""


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_file(tmp_path):
    part = tmp_path / "killed.h5"
    script = _SCRIPT.format(tests=os.path.dirname(__file__), path=str(part))
    env = {**os.environ, "LOSSATLAS_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert la.load(part).done.sum() == 8
    net, X, y = problem(bn=True)
    obj = la.Objective(net, (X, y), batch_size=64)
    d1, d2 = (la.directions.gaussian(net, seed=s) for s in (0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la.surface(obj, d1, d2, resolution=6, chunk_size=4, path=part)
        la.surface(obj, d1, d2, resolution=6, chunk_size=4, path=tmp_path / "full.h5")
    _same_file(tmp_path / "full.h5", part)


def test_mismatched_rerun_is_refused(tmp_path):
    net, X, y = problem(bn=True)
    obj = la.Objective(net, (X, y))
    d1, d2, d3 = (la.directions.gaussian(net, seed=s) for s in (0, 1, 2))
    path = tmp_path / "s.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        la.surface(obj, d1, d2, resolution=3, path=path)
        with pytest.raises(LossAtlasError, match="coordinates"):
            la.surface(obj, d1, d2, resolution=4, path=path)
        with pytest.raises(LossAtlasError, match="direction_hashes"):
            la.surface(obj, d1, d3, resolution=3, path=path)
        recal = la.Objective(net, (X, y), bn="recalibrate")
        with pytest.raises(LossAtlasError, match="bn"):
            la.surface(recal, d1, d2, resolution=3, path=path)
        with pytest.raises(LossAtlasError, match="data_hash"):
            la.surface(la.Objective(net, (X[:-1], y[:-1])), d1, d2, resolution=3, path=path)
        with pytest.raises(LossAtlasError, match="not a resumable curve"):
            la.curve(obj, d1, points=3, path=path)


def test_file_keeps_classic_keys_and_provenance(tmp_path):
    net, X, y = problem()
    obj = la.Objective(net, (X, y))
    d1, d2 = (la.directions.gaussian(net, seed=s) for s in (0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = la.surface(obj, d1, d2, resolution=3, path=tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["train_loss"].shape == (3, 3) and f["xcoordinates"].shape == (3,)
        for key in ("lossatlas_version", "center_hash", "bn", "span", "resolution",
                    "directions_info", "num_samples", "data_hash"):
            assert key in f.attrs, key
    info = s.meta["directions_info"]
    assert [i["seed"] for i in info] == [0, 1] and info[0]["norm"] == "filter"
    assert all(torch.equal(s.directions[0][k], d1[k]) for k in d1)
    s.save(tmp_path / "copy.h5")
    np.testing.assert_array_equal(la.load(tmp_path / "copy.h5").loss, s.loss)


class _PicklingExecutor:
    """Runs every chunk on a pickled copy, as a process pool or Ray would."""

    def map(self, fn, chunks):
        for c in chunks:
            yield pickle.loads(pickle.dumps(fn))(pickle.loads(pickle.dumps(c)))


def test_executor_gets_picklable_chunks(monkeypatch):
    monkeypatch.setattr(engine, "race_engines", lambda eng, coeffs: None)  # one engine in both
    net, X, y = problem(bn=True)
    obj = la.Objective(net, (X, y))
    d1, d2 = (la.directions.gaussian(net, seed=s) for s in (0, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = la.surface(obj, d1, d2, resolution=4)
        b = la.surface(obj, d1, d2, resolution=4, executor=_PicklingExecutor())
    np.testing.assert_array_equal(a.loss, b.loss)


class _ScaledInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.lin = nn.Linear(36, 4)

    def forward(self, x):
        return self.lin(x.flatten(1) * self.scale)


class _Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, ids):
        return self.out(torch.tanh(self.emb(ids)).mean(1))


@pytest.mark.parametrize("kind,expect", [("scaled", "inplace"), ("norm_first", "inplace"),
                                         ("tokens", "affine")])
def test_first_layer_trick_applies_only_where_exact(kind, expect):
    torch.manual_seed(0)
    if kind == "tokens":
        net, X, y = _Tokens(), torch.randint(0, 11, (40, 5)), torch.randint(0, 4, (40,))
    else:
        _, X, y = problem()
        net = _ScaledInput() if kind == "scaled" else nn.Sequential(
            nn.Flatten(), nn.LayerNorm(36), nn.Linear(36, 4))
    obj = la.Objective(net, (X, y))
    d1, d2 = (la.directions.gaussian(net, seed=s, ignore=None) for s in (0, 1))
    eng = engine.Engine.build(obj, obj.center, [d1, d2], fast="affine")
    assert eng.mode == expect, eng.reason
    coeffs = np.array([[0.7, -0.4], [-1.0, 0.3]])
    loss, _ = eng.evaluate(coeffs)
    for (a, b), v in zip(coeffs, loss):
        assert v == pytest.approx(obj.loss(obj.center + a * d1 + b * d2), rel=1e-5)


def test_bad_arguments():
    net, X, y = problem()
    obj = la.Objective(net, (X, y))
    d = la.directions.gaussian(net, seed=0)
    with pytest.raises(LossAtlasError, match="span"):
        la.curve(obj, d, span=(1, -1))
    with pytest.raises(LossAtlasError, match="d does not cover"):
        la.curve(obj, {"1.weight": d["1.weight"]})
    with pytest.raises(LossAtlasError, match="obj must be"):
        la.curve(net, d)


def test_several_points_per_pass_agree_with_one():
    """The accelerator path (vmap over stacked points) gives the same values; on the CPU the
    engine keeps one point per pass without measuring."""
    net, X, y = problem(bn=True)
    obj = la.Objective(net, (X, y), batch_size=50)
    d1, d2 = (la.directions.gaussian(net, seed=s, ignore=None) for s in (0, 1))
    eng = engine.Engine.build(obj, obj.center, [d1, d2], fast=False)
    assert eng.measure_per_pass() == 1
    coeffs = np.random.RandomState(0).randn(7, 2)
    loss1, acc1 = eng.evaluate(coeffs)
    eng.per_pass = 3
    loss3, acc3 = eng.evaluate(coeffs)
    np.testing.assert_allclose(loss3, loss1, rtol=1e-5)
    np.testing.assert_array_equal(acc3, acc1)
