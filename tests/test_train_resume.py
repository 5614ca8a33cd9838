"""Nothing finished is lost: a rerun of a finished run trains nothing, an interrupted run
continues bit-identically, ``overwrite`` replaces only once the new run has finished, and a
second writer on the folder is refused."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

import lossatlas.batteries.training as T
from lossatlas.cli import app
from lossatlas.core.errors import LossAtlasError

STOP = {"at": None, "n": 0}


def ce(out, y):
    """Cross-entropy that raises KeyboardInterrupt (a Ctrl-C) at training step STOP["at"]."""
    if torch.is_grad_enabled():
        STOP["n"] += 1
        if STOP["n"] == STOP["at"]:
            raise KeyboardInterrupt
    return F.cross_entropy(out, y)


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("LOSSATLAS_QUIET", "1")
    STOP.update(at=None, n=0)


def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(70, 5, generator=g)
    return torch.utils.data.TensorDataset(X, (X[:, 0] > 0).long() + (X[:, 1] > 0.3).long())


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.2),
                         nn.Linear(12, 3))


def fit(out, stop_at=None, **kw):
    STOP.update(at=stop_at, n=0)
    args = {"epochs": 4, "batch_size": 16, "lr": 0.05, "loss": ce, "out": out, **kw}
    return T.train(model(), data(), **args)


def same_run(a, b):
    ra, rb = T.load_run(a), T.load_run(b)
    assert ra.status == rb.status == "finished" and len(ra) == len(rb)
    for ea, eb in zip(ra.manifest, rb.manifest):
        assert {k: v for k, v in ea.items() if k != "time"} == \
               {k: v for k, v in eb.items() if k != "time"}
        assert (a / ea["file"]).read_bytes() == (b / eb["file"]).read_bytes()
    assert not list((b / "checkpoints").glob("resume_*"))


@pytest.mark.parametrize("record,stops", [("epoch", [7, 3]), (3, [5, 2, 4])])
def test_interrupted_run_continues_bit_identically(tmp_path, record, stops):
    fit(tmp_path / "full", record=record)
    for stop in stops:  # interrupted again and again, each time after a few more steps
        with pytest.raises(KeyboardInterrupt):
            fit(tmp_path / "cut", stop_at=stop, record=record)
        assert T.load_run(tmp_path / "cut").status == "interrupted"
    last = len(T.load_run(tmp_path / "cut")) - 1
    run = fit(tmp_path / "cut", record=record)
    assert not run.already_done and len(run.info["resumes"]) == len(stops)
    assert run.resumed_after == last
    same_run(tmp_path / "full", tmp_path / "cut")


def test_rerun_of_a_finished_run_trains_nothing(tmp_path):
    first = fit(tmp_path / "r")
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    STOP.update(at=1, n=0)  # any training step would raise
    m = model()
    again = T.train(m, data(), epochs=4, batch_size=16, lr=0.05, loss=ce, out=tmp_path / "r")
    assert again.already_done and len(again) == len(first)
    assert {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == before
    assert torch.equal(m.state_dict()["4.weight"], first.states[-1]["4.weight"])


def test_interrupted_run_without_resume_state_is_refused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "r", stop_at=9)
    for f in (tmp_path / "r" / "checkpoints").glob("resume_*"):
        f.unlink()  # as a run written before resume states existed
    with pytest.raises(LossAtlasError, match=r"without the optimizer.*--overwrite"):
        fit(tmp_path / "r")
    assert len(T.load_run(tmp_path / "r")) == 2  # untouched (5 steps an epoch)
    fit(tmp_path / "r", overwrite=True)
    fit(tmp_path / "full")
    same_run(tmp_path / "full", tmp_path / "r")


def test_overwrite_replaces_only_once_the_new_run_has_finished(tmp_path):
    out = tmp_path / "r"
    fit(out, epochs=2)
    (out / "notes.txt").write_text("mine")
    old = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    with pytest.raises(KeyboardInterrupt):  # the replacement is cut short twice
        fit(out, stop_at=6, overwrite=True)
    with pytest.raises(KeyboardInterrupt):
        fit(out, stop_at=4, overwrite=True)
    assert {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()} == old
    assert T.load_run(out).status == "finished" and len(T.load_run(out)) == 3
    with pytest.raises(LossAtlasError, match="different run"):
        fit(out)  # without --overwrite the old run stays
    fit(out, overwrite=True)  # continues the partial replacement
    fit(tmp_path / "full")
    same_run(tmp_path / "full", out)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "r"]


def test_second_writer_on_a_run_folder_is_refused(tmp_path):
    import os

    rec = T.Recorder(tmp_path / "r", model())
    with pytest.raises(LossAtlasError, match=f"written by process {os.getpid()}"):
        T.Recorder(tmp_path / "r", model())
    rec.finish()
    T.Recorder(tmp_path / "r", model()).finish()


def test_cli_rerun_says_so_in_one_line(tmp_path):
    args = ["train", "--model", "mlp", "--data", "digits", "--data-arg", "train_size=120",
            "--width", "8", "--epochs", "1", "--out", str(tmp_path / "r"), "--no-figure"]
    assert CliRunner().invoke(app, args).exit_code == 0
    manifest = (tmp_path / "r" / "manifest.json").read_text()
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0 and len(res.output.strip().splitlines()) == 1
    assert "already trained" in res.output and "--overwrite" in res.output
    assert (tmp_path / "r" / "manifest.json").read_text() == manifest
    assert json.loads(manifest)["status"] == "finished"


def test_run_killed_before_its_first_checkpoint_starts_afresh(tmp_path):
    T.Recorder(tmp_path / "r", model(), config={"other": 1}).close()  # a manifest, no entries
    fit(tmp_path / "r")
    fit(tmp_path / "full")
    same_run(tmp_path / "full", tmp_path / "r")
