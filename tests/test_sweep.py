"""Sweeps: TOML parsing, the grid, resume by job hash, aggregation and the phase plots."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lossatlas as la
from lossatlas import sweeps as S
from lossatlas.core.errors import LossAtlasError
from lossatlas.sweeps import jobs
from lossatlas.sweeps.executors import threads

TOML = """
name = "tiny"
seeds = [0, 1]
[data]
name = "digits"
train_size = 200
[model]
name = "mlp"
[train]
epochs = 2
lr = 0.05
[load]
param = "width"
values = [4, 16]
[temperature]
param = "batch_size"
values = [32, 128]
[measure]
hessian = false
mc = false
cka = false
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "tiny.toml"
    path.write_text(TOML)
    return S.load_spec(path)


@pytest.fixture(scope="module")
def tiny(spec, tmp_path_factory):
    """The tiny sweep, run once: (its folder, its result)."""
    out = tmp_path_factory.mktemp("tiny") / "out"
    return out, S.run(spec, out, progress=False)


def test_spec_and_cells(spec):
    assert spec.load.param == "model.width" and spec.temperature.param == "train.batch_size"
    assert not spec.hot_first  # batch size is inverse temperature
    grid = S.cells(spec)
    assert [(c.load, c.temperature) for c in grid] == [(4, 32), (4, 128), (16, 32), (16, 128)]
    assert grid[1].config["model"] == {"name": "mlp", "width": 4}
    assert grid[1].config["train"]["batch_size"] == 128
    assert len({c.key for c in grid}) == 4
    # the model's key ignores pair-only measurement settings; the pair's key follows them
    raw = spec.to_dict()
    raw["measure"] = {**spec.measure, "cka_samples": 64}
    other = S.load_spec(raw)
    a, b = grid[0], S.cells(other)[0]
    assert a.model_key(0) == b.model_key(0) and a.train_key(0) == b.train_key(0)
    assert a.pair_key(0, 1) != b.pair_key(0, 1)


@pytest.mark.parametrize("patch, match", [
    ({"load": {"param": "colour", "values": [1]}}, "unknown"),
    ({"load": {"param": "width", "values": []}}, "non-empty"),
    ({"temperature": {"param": "width", "values": [1, 2]}}, "same setting"),
    ({"seeds": [0, 0]}, "distinct"),
    ({"measure": {"hesian": True}}, "unknown keys"),
    ({"model": {"width": 3}}, "needs a name"),
    ({"bogus": 1}, "unknown entries"),
])
def test_bad_specs(spec, patch, match):
    raw = spec.to_dict()
    raw.update(patch)
    with pytest.raises(LossAtlasError, match=match):
        S.load_spec(raw)


def test_missing_file(tmp_path):
    with pytest.raises(LossAtlasError, match="does not exist"):
        S.load_spec(tmp_path / "nope.toml")


def test_run_resume_and_table(spec, tiny, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny[0], out)
    res = tiny[1]
    rows = [json.loads(line) for line in (out / S.RESULTS).read_text().splitlines()]
    models = [r for r in rows if r["kind"] == "model"]
    assert len(models) == 8 and len({r["key"] for r in models}) == 8
    # only l2 asked among the pair metrics: one pair per cell
    pairs = [r for r in rows if r["kind"] == "pair"]
    assert len(pairs) == 4
    # each model row is reproduced by training the same config directly
    cell = S.cells(spec)[3]
    train, test = la.datasets.load("digits", train_size=200)
    model = la.zoo.build("mlp", dataset=train, seed=1, width=16)
    with threads(1):  # as the sweep's jobs run: the same reductions, the same bits
        run = la.train(model, train, epochs=2, lr=0.05, batch_size=128, seed=1, record=None,
                       test_data=test, progress=False)
    row = next(r for r in models if r["key"] == cell.model_key(1))
    assert row["metrics"]["train_loss"] == pytest.approx(run.manifest[-1]["train_loss"], abs=1e-6)
    assert row["metrics"]["test_acc"] == pytest.approx(100 * run.manifest[-1]["test_acc"])
    assert row["metrics"]["train_error"] == pytest.approx(100 - row["metrics"]["train_acc"])
    saved = torch.load(out / row["model_file"], weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    # the cell table is the mean over seeds
    c = res.cells[3]
    vals = [r["metrics"]["test_acc"] for r in models if r["cell"] == cell.key]
    assert c["test_acc"] == pytest.approx(np.mean(vals)) and c["n_models"] == 2
    assert res.grid("test_acc")[1, 1] == c["test_acc"]  # [temperature j, load i]
    # l2 of the pair equals the norm of the difference of the saved weights
    prow = next(r for r in pairs if r["cell"] == cell.key)
    w = [torch.load(out / "models" / f"{cell.train_key(s)}.pt", weights_only=True)
         for s in (0, 1)]
    diff = math.sqrt(sum(float(((w[0][k] - w[1][k]) ** 2).sum()) for k in w[0]))
    assert prow["metrics"]["l2"] == pytest.approx(diff, rel=1e-5)
    # a rerun does nothing; a lost line is redone (and only that one)
    S.run(spec, out, progress=False)
    assert len((out / S.RESULTS).read_text().splitlines()) == 12
    lines = (out / S.RESULTS).read_text().splitlines()
    (out / S.RESULTS).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20] + "\n")
    again = S.run(spec, out, progress=False)
    redone = [json.loads(x) for x in (out / S.RESULTS).read_text().splitlines()[12:]]
    assert len(redone) == 1 and redone[0]["key"] == json.loads(lines[-1])["key"]
    assert again.cells == S.load_results(out).cells
    assert (out / S.CELLS).is_file()


def test_hessian_on_a_200_sample_batch():
    """λ_max and trace come from the batch the sweep says, compared with the full Hessian."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    train = la.datasets.ArrayDataset(torch.randn(300, 10), torch.randint(0, 3, (300,)))
    got = jobs._hessian(model, train, {"hessian_samples": 200}, seed=3)
    X, y = jobs._hessian_batch(train, 200, 3)
    assert len(y) == 200
    params = dict(model.named_parameters())
    names = list(params)

    def loss(*flat):
        out = torch.func.functional_call(model, dict(zip(names, flat)), (X,))
        return torch.nn.functional.cross_entropy(out, y)

    blocks = torch.autograd.functional.hessian(loss, tuple(p.detach() for p in params.values()))
    sizes = [p.numel() for p in params.values()]
    H = torch.cat([torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(names))],
                             1) for i in range(len(names))], 0)
    assert got["hessian_max"] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-3)
    assert got["hessian_trace"] == pytest.approx(float(torch.trace(H)), rel=0.3)


def test_plots(tiny, tmp_path):
    import copy

    import matplotlib.pyplot as plt

    from lossatlas.plot import phases as P

    res = copy.deepcopy(tiny[1])
    for c, label in zip(res.cells, ["I", "II", "III", "IV-B"]):
        c["phase"] = label
    fig = P.phase_diagram(res, tmp_path / "p.png")
    # batch size is inverse temperature: the hottest row (smallest batch) is drawn on top
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["32", "128"]
    drawn = [ax for ax in fig.axes if ax.get_images()]  # the phase map and the metric maps
    assert drawn and all(ax.get_title() for ax in drawn)
    phase = next(ax for ax in drawn if ax.get_title() == "phase")
    assert phase.get_images()[0].get_array().shape == (2, 2)  # temperatures x loads
    assert phase.get_xlabel() == "load: width"
    assert fig.axes[0].get_ylabel().startswith("temperature")  # on the first column
    assert plt.imread(tmp_path / "p.png").ndim == 3
    plt.close(fig)
    with pytest.raises(LossAtlasError, match="mc = true"):
        P.mc_curves(res)


def test_pair_metrics_are_the_measurement_functions(tmp_path):
    """mc, CKA and ℓ2 of a pair row equal la.connect / la.similarity on the saved models, and
    the phase is la.taxonomy's label of the cell row."""
    raw = {"name": "pair", "seeds": [0, 1], "data": {"name": "digits", "train_size": 120},
           "model": {"name": "mlp", "width": 8}, "train": {"epochs": 2, "lr": 0.05},
           "load": {"param": "width", "values": [8]},
           "temperature": {"param": "batch_size", "values": [32]},
           "measure": {"hessian": False, "connect": {"epochs": 1}, "cka_samples": 64}}
    res = S.run(raw, tmp_path / "o", progress=False)
    cell = S.cells(S.load_spec(raw))[0]
    row = next(r for r in res.rows if r["kind"] == "pair")
    assert not row["errors"]
    train, _ = la.datasets.load("digits", train_size=120)
    models = []
    for s in (0, 1):
        m = la.zoo.build("mlp", dataset=train, width=8)
        m.load_state_dict(torch.load(tmp_path / "o" / "models" / f"{cell.train_key(s)}.pt",
                                     weights_only=True))
        models.append(m)
    mc = la.connect.mode_connectivity(row["curve"]["t"], row["curve"]["values"])
    assert row["metrics"]["mc"] == pytest.approx(mc.mc)
    assert row["curve"]["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    direct = la.connect.mode_connectivity_between(models[0], models[1], train, points=5,
                                                  seed=1, epochs=1)
    assert direct["values"] == pytest.approx(row["curve"]["values"])
    cka = la.similarity.model_cka(models[0], models[1], train, m=64, seed=1)
    assert row["metrics"]["cka"] == pytest.approx(cka)
    assert row["metrics"]["l2"] == pytest.approx(la.similarity.l2_distance(*models))
    assert res.cells[0]["phase"] == la.taxonomy.classify(res.cells[0]).label
    assert res.cells[0]["phase"] in la.taxonomy.LABELS


def test_cli_sweep_and_phases(tmp_path, saved_figures):
    from typer.testing import CliRunner

    from lossatlas.cli import app

    (tmp_path / "s.toml").write_text(TOML.replace("values = [4, 16]", "values = [4]"))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["sweep", str(tmp_path / "s.toml"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / S.CELLS).is_file()
    maps = [ax for ax in saved_figures["phases.png"].axes if ax.get_images()]
    assert "phase" in [ax.get_title() for ax in maps]
    assert all(ax.get_images()[0].get_array().shape == (2, 1) for ax in maps)  # 2 temps x 1 load
    assert len((out / S.RESULTS).read_text().splitlines()) == 6  # 2 cells x (2 models + 1 pair)
    r = CliRunner().invoke(app, ["phases", str(out), "--no-plot"])
    assert r.exit_code == 0 and "sweep tiny" in r.output


def test_executor_with_map_only(spec, tiny, tmp_path):
    """An executor with only map(fn, items) (like la.surface's default) runs a sweep too."""

    class MapOnly:
        def map(self, fn, items):
            return map(fn, items)

    res = S.run(spec, tmp_path / "o", executor=MapOnly(), progress=False)
    assert res.cells == tiny[1].cells
    with pytest.raises(LossAtlasError, match="executor"):
        S.run(spec, tmp_path / "p", executor=object(), progress=False)


def test_torn_last_line_is_cut_and_its_job_redone(spec, tiny, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny[0], out)
    lines = (out / S.RESULTS).read_text().splitlines()
    # a crash in the middle of writing the last row: no newline after the fragment
    (out / S.RESULTS).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])
    S.run(spec, out, progress=False)
    text = (out / S.RESULTS).read_text()
    rows = [json.loads(x) for x in text.splitlines()]  # every line parses: nothing glued
    assert text.endswith("\n") and len(rows) == len(lines)
    assert [r["key"] for r in rows] == [json.loads(x)["key"] for x in lines]
    assert S.load_results(out).cells == tiny[1].cells  # n_models 2 everywhere, as before


def test_second_sweep_on_a_folder_is_refused(spec, tiny, tmp_path):
    import os

    from lossatlas.store.locks import writer_lock

    out = tmp_path / "out"
    shutil.copytree(tiny[0], out)
    before = (out / S.RESULTS).read_bytes()
    with (writer_lock(tmp_path / "out.lock", "test"),
          pytest.raises(LossAtlasError, match=f"sweep folder.*process {os.getpid()}")):
        S.run(spec, out, progress=False)
    assert (out / S.RESULTS).read_bytes() == before


def test_a_sweep_spec_reads_without_tomllib_as_on_python_3_10(monkeypatch):
    """Python 3.10 has no tomllib; the backport tomli (declared in pyproject) reads the spec."""
    import sys

    from lossatlas.sweeps import spec as sweep_spec

    pytest.importorskip("tomli")
    spec = Path(__file__).parents[1] / "examples" / "sweep_digits.toml"
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` now fails
    with pytest.raises(ImportError):
        import tomllib  # noqa: F401
    assert sweep_spec._toml().__name__ == "tomli"
    assert sweep_spec.load_spec(spec).name == "digits"
