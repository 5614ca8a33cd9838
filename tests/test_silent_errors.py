"""No silent wrong numbers: the affine engine proves itself on the model in hand (tied weights),
half-computed files are refused by ``shapes`` / ``plot`` unless ``--partial``, non-finite
directions are refused, a sweep job that raised is recorded as failed and retried, every TOML
table is checked, a DataLoader that skips or repeats samples is refused, and the Objective says
that it holds a snapshot of the weights."""

from __future__ import annotations

import json
import math
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset
from typer.testing import CliRunner

import lossatlas as la
from lossatlas import sweeps as S
from lossatlas.cli import app
from lossatlas.core.errors import LossAtlasError
from lossatlas.measurements.landscape import engine, first_layer
from lossatlas.sweeps import jobs

TIED = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Tied(nn.Module):
        """The first layer's weight is used again later: F.linear(h, self.inp.weight)."""

        def __init__(self, in_features, num_classes):
            super().__init__()
            self.inp = nn.Linear(in_features, in_features)
            self.out = nn.Linear(in_features, num_classes)

        def forward(self, x):
            h = torch.relu(self.inp(x))
            return self.out(torch.relu(F.linear(h, self.inp.weight)))

    def make(in_features=20, num_classes=3):
        return Tied(in_features, num_classes)
''')


@pytest.fixture
def tied_module(tmp_path, monkeypatch):
    (tmp_path / "tiedmodels.py").write_text(TIED)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "tiedmodels:make"


def _data(n=120, d=20, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


def _plain(obj, d1, d2, x, y):
    """The surface from the Objective's own functional forward, point by point."""
    return np.array([[obj.loss(la.params.axpy(obj.center, [a, b], [d1, d2])) for b in y]
                     for a in x])


# -- the affine engine -----------------------------------------------------------------------
def test_tied_first_layer_weight_from_a_factory_is_exact(tied_module):
    model = la.zoo.build(tied_module, in_features=20, num_classes=3, seed=0)
    obj = la.Objective(model, _data(), batch_size=50)
    d1, d2 = (la.directions.gaussian(model, seed=s) for s in (0, 1))
    eng = engine.Engine.build(obj, obj.center, [d1, d2])
    assert eng.mode == "affine" and "read elsewhere" in eng.reason and "linear" in eng.reason
    s = la.surface(obj, d1, d2, resolution=5, progress=False)
    np.testing.assert_allclose(s.loss, _plain(obj, d1, d2, s.x, s.y), rtol=1e-5)


def test_guard_catches_a_read_the_trace_missed(tied_module, monkeypatch):
    model = la.zoo.build(tied_module, in_features=20, num_classes=3, seed=0)
    obj = la.Objective(model, _data(), batch_size=50)
    d1, d2 = (la.directions.gaussian(model, seed=s) for s in (0, 1))
    want = _plain(obj, d1, d2, np.array([-1.0, 1.0]), np.array([0.5]))
    monkeypatch.setattr(first_layer, "reads_outside", lambda *a: [])  # blind the trace
    eng = engine.Engine.build(obj, obj.center, [d1, d2])
    assert eng.mode == "inplace" and "differed from a plain forward" in eng.reason
    got, _ = eng.evaluate(np.array([[-1.0, 0.5], [1.0, 0.5]]))
    np.testing.assert_allclose(got, want[:, 0], rtol=1e-5)
    # without the guard as well, the trick is wrong here: the test can fail
    monkeypatch.setattr(engine, "GUARD_RTOL", math.inf)
    blind = engine.Engine.build(obj, obj.center, [d1, d2])
    assert blind.mode == "affine"
    wrong, _ = blind.evaluate(np.array([[-1.0, 0.5], [1.0, 0.5]]))
    assert np.max(np.abs(wrong - want[:, 0]) / want[:, 0]) > 1e-3


def test_plain_mlp_keeps_the_affine_engine_and_its_numbers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 3))
    obj = la.Objective(model, _data(), batch_size=50)
    d1, d2 = (la.directions.gaussian(model, seed=s) for s in (0, 1))
    eng = engine.Engine.build(obj, obj.center, [d1, d2])
    assert eng.mode == "affine" and eng.reason == "ok"
    assert [p for p, _, _ in eng._slots if p.shape == (32, 20)] == []  # layer 0 not rewritten
    s = la.surface(obj, d1, d2, resolution=4, progress=False, fast="affine")  # no race
    assert s.meta["engine"] == "affine"
    np.testing.assert_allclose(s.loss, _plain(obj, d1, d2, s.x, s.y), rtol=1e-5)


def test_reading_only_metadata_of_the_weight_is_not_a_read():
    class Meta(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = nn.Linear(20, 32), nn.Linear(32, 3)

        def forward(self, x):
            assert self.inp.weight.shape == (32, 20) and self.inp.weight.dtype == x.dtype
            return self.out(torch.relu(self.inp(x)))

    torch.manual_seed(0)
    model = Meta()
    obj = la.Objective(model, _data(), batch_size=50)
    d = la.directions.gaussian(model, seed=0)
    eng = engine.Engine.build(obj, obj.center, [d])
    assert eng.mode == "affine" and eng.reason == "ok"


# -- non-finite directions -------------------------------------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_direction_is_refused(tmp_path, bad):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 3))
    obj = la.Objective(model, _data())
    d = la.directions.gaussian(model, seed=0)
    d["2.weight"][0, 0] = bad
    path = tmp_path / "c.h5"
    with pytest.raises(LossAtlasError, match=r"d\['2.weight'\] holds NaN or inf"):
        la.curve(obj, d, points=5, path=path, progress=False)
    assert not path.exists()
    with pytest.raises(LossAtlasError, match=r"d2\['2.weight'\] holds NaN or inf"):
        la.surface(obj, la.directions.gaussian(model, seed=1), d, resolution=3, progress=False)
    b = la.params.of(model)
    b["0.bias"][1] = bad
    with pytest.raises(LossAtlasError, match=r"b\['0.bias'\] holds NaN or inf"):
        la.interpolate(obj, obj.center, b, points=5, progress=False)


def test_non_finite_direction_is_refused_by_the_cli(tmp_path):
    model = la.zoo.build("mlp", in_features=64, num_classes=10, width=8, seed=0)
    nan = {k: torch.full_like(v, math.nan) for k, v in model.state_dict().items()}
    torch.save(nan, tmp_path / "nan.pt")
    out = tmp_path / "c.h5"
    r = CliRunner().invoke(app, ["curve", "--width", "8", "-D", f"checkpoint:{tmp_path}/nan.pt",
                                 "--points", "5", "--out", str(out)])
    assert isinstance(r.exception, LossAtlasError), r.output
    assert "holds NaN or inf" in str(r.exception) and "\n" not in str(r.exception)
    assert not out.exists()


# -- half-computed files ---------------------------------------------------------------------
class _StopError(Exception):
    pass


def _half_curve(path):
    """A curve file with 5 of its 11 points computed (the run stopped after one chunk)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 3))
    obj = la.Objective(model, _data())
    d = la.directions.gaussian(model, seed=0)

    def stop(done, total):
        raise _StopError

    with pytest.raises(_StopError):
        la.curve(obj, d, points=11, path=path, chunk_size=5, callback=stop, progress=False)
    return la.load(path)


def test_shapes_and_plot_refuse_a_half_computed_file(tmp_path):
    path = tmp_path / "half.h5"
    res = _half_curve(path)
    assert int(np.sum(res.done)) == 5
    before = path.read_bytes()
    for cmd in (["shapes", str(path)], ["plot", str(path)]):
        r = CliRunner().invoke(app, cmd)
        assert isinstance(r.exception, LossAtlasError), r.output
        text = str(r.exception)
        assert "half-computed (5 of 11 points)" in text and "--partial" in text
        assert "\n" not in text
    assert path.read_bytes() == before
    assert not (tmp_path / "half.png").exists()


def test_partial_analyses_only_the_computed_points_and_says_so(tmp_path):
    path = tmp_path / "half.h5"
    res = _half_curve(path)
    r = CliRunner().invoke(app, ["shapes", str(path), "--partial"])
    assert r.exit_code == 0, r.output
    assert "partial: 5 of 11 points" in r.output
    done = np.asarray(res.done, dtype=bool)
    want = la.shapes.classify(res.x[done], res.loss[done])
    assert f": {want.kind} [{want.stationary}]" in r.output
    r = CliRunner().invoke(app, ["plot", str(path), "--partial"])
    assert r.exit_code == 0, r.output
    assert "partial: 5 of 11 points" in r.output and (tmp_path / "half.png").exists()
    from lossatlas.plot.landscape import _title
    assert "partial: 5 of 11 points" in _title(res)


# -- sweeps ----------------------------------------------------------------------------------
TOML = """
name = "fails"
seeds = [0, 1]
[data]
name = "digits"
train_size = 100
[model]
name = "mlp"
[train]
epochs = 1
lr = 0.05
[load]
param = "width"
values = [4]
[temperature]
param = "batch_size"
values = [64]
[measure]
hessian = false
cka = false
l2 = true
[measure.connect]
epochs = 1
"""


@pytest.mark.parametrize("table, line, valid", [
    ("[train]", "lrr = 0.1", "'lr'"),
    ("[model]", "widht = 3", "'width'"),
    ("[data]", "trainsize = 3", "'train_size'"),
    ("[measure.connect]", "epoch = 2", "'epochs'"),
    ("[phases]", "ckaa = 0.5", "'cka'"),
    ("[load]", "lable = 'w'", "'label'"),
])
def test_unknown_keys_in_every_table_are_refused(tmp_path, table, line, valid):
    text = TOML if table in TOML else TOML + f"\n{table}\n"
    path = tmp_path / "s.toml"
    path.write_text(text.replace(f"{table}\n", f"{table}\n{line}\n", 1))
    with pytest.raises(LossAtlasError, match=r"has unknown keys \[") as exc:
        S.load_spec(path)
    assert table.strip("[]") in str(exc.value) and valid in str(exc.value)


def test_axis_setting_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(TOML.replace('param = "batch_size"', 'param = "train.batchsize"'))
    with pytest.raises(LossAtlasError, match=r"\[temperature\] param='train.batchsize'.*'batch_"):
        S.load_spec(path)


@pytest.mark.slow
def test_failed_measurement_is_recorded_reported_and_retried(tmp_path, monkeypatch):
    spec = S.load_spec({**S.load_spec(_write(tmp_path, TOML)).to_dict()})
    out = tmp_path / "out"

    def broken(*a, **k):
        raise TypeError("train_curve() got an unexpected keyword argument 'lrr'")

    monkeypatch.setattr(jobs, "_connectivity", broken)
    with pytest.warns(UserWarning, match=r"1 sweep job\(s\) failed.*lrr"):
        res = S.run(spec, out, progress=False)
    rows = [json.loads(x) for x in (out / S.RESULTS).read_text().splitlines()]
    pair = [r for r in rows if r["kind"] == "pair"]
    assert len(pair) == 1 and pair[0]["status"] == "failed" and "lrr" in pair[0]["errors"]["mc"]
    assert [r["key"] for r in res.failures] == [pair[0]["key"]]
    assert res.cells[0]["n_pairs"] == 0 and math.isnan(res.cells[0]["l2"])  # no cell numbers
    monkeypatch.undo()
    res = S.run(spec, out, progress=False)  # the rerun retries the pair only
    rows = [json.loads(x) for x in (out / S.RESULTS).read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["model", "model", "pair", "pair"]
    assert rows[-1]["status"] == "done" and rows[-1]["metrics"]["mc"] is not None
    assert res.failures == [] and res.cells[0]["n_pairs"] == 1


def test_job_that_raises_is_failed_and_the_cli_exits_non_zero(tmp_path):
    text = TOML.replace("[measure.connect]\nepochs = 1", "[measure.connect]\nbends = -1")
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["sweep", _write(tmp_path, text), "--out", str(out),
                                 "--no-plot"])
    assert r.exit_code == 1, r.output
    assert "failed: pair job at model.width=4, train.batch_size=64, seeds [0, 1]: mc:" in r.output
    assert "1 job(s) failed" in r.output and "rerun" in r.output


def _write(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return str(path)


# -- loaders ---------------------------------------------------------------------------------
def _loader_data():
    X, y = _data(n=103)
    return TensorDataset(X, y)


@pytest.mark.parametrize("make, match", [
    (lambda ds: DataLoader(ds, batch_size=10, shuffle=True, drop_last=True),
     r"drop_last=True and 103 samples.*3 samples"),
    (lambda ds: DataLoader(ds, batch_size=10, sampler=SubsetRandomSampler(range(50))),
     r"yields 50 indices, not each of the 103"),
    (lambda ds: DataLoader(ds, batch_size=10, sampler=torch.utils.data.WeightedRandomSampler(
        torch.ones(103), 103)), r"yields 103 indices, not each of the 103 samples once"),
])
def test_loader_that_does_not_visit_every_sample_once_is_refused(make, match):
    model = nn.Linear(20, 3)
    with pytest.raises(LossAtlasError, match=match) as exc:
        la.Objective(model, make(_loader_data()))
    assert "loader.dataset" in str(exc.value) and "\n" not in str(exc.value)


def test_shuffled_loader_without_drop_last_is_exact_and_leaves_the_rng_alone():
    ds = _loader_data()
    model = nn.Linear(20, 3)
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    loader = DataLoader(ds, batch_size=10, shuffle=True)
    from lossatlas.core.batching import check_loader_visits_all
    check_loader_visits_all(loader)
    assert torch.equal(torch.rand(3), want)  # the check drew from a forked RNG
    a = la.Objective(model, loader).loss()
    b = la.Objective(model, ds).loss()
    assert abs(a - b) < 1e-6
    drop_ok = DataLoader(TensorDataset(*_data(n=100)), batch_size=10, shuffle=True,
                         drop_last=True)
    la.Objective(model, drop_ok)  # 100 % 10 == 0: every sample is seen


# -- the snapshot ----------------------------------------------------------------------------
def test_objective_says_it_holds_a_snapshot():
    model = nn.Linear(20, 3)
    obj = la.Objective(model, _data())
    before = obj.loss()
    with torch.no_grad():
        model.weight.mul_(3.0)
    assert obj.loss() == before  # the documented snapshot, not the changed model
    assert "weights snapshot" in repr(obj) and "taken at construction" in repr(obj)
    assert "snapshot" in la.Objective.__doc__.split("\n\n")[1]
    assert la.Objective(model, _data()).loss() != before

