"""The `train` and `demo` commands and the shared CLI resolvers (cli/resolve.py, cli/options.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lossatlas.report.demo as demo_mod
from lossatlas.batteries.resolve import load_checkpoint, resolve_data, resolve_model, setup
from lossatlas.batteries.training import load_run
from lossatlas.cli import app
from lossatlas.cli.options import model_options, parse_options, slug
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.params import of

TINY = ["--model", "mlp", "--data", "digits", "--data-arg", "train_size=200", "--width", "16",
        "--epochs", "2", "--batch-size", "64"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("LOSSATLAS_QUIET", "1")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_train_writes_run_and_figure(tmp_path, saved_figures):
    out = tmp_path / "run"
    res = invoke("train", *TINY, "--seed", "3", "--out", out)
    assert res.exit_code == 0, res.output
    assert "3 checkpoints" in res.output and "test loss" in res.output
    ax_loss, ax_acc = saved_figures["training.png"].axes  # loss and accuracy against epoch
    assert (ax_loss.get_title(), ax_acc.get_title()) == ("loss", "accuracy")
    run = load_run(out)
    train_line = next(ln for ln in ax_loss.get_lines() if ln.get_label() == "train")
    np.testing.assert_allclose(train_line.get_xdata(), run.epochs)
    np.testing.assert_allclose(train_line.get_ydata(), run.train_loss)
    assert sorted(ln.get_label() for ln in ax_acc.get_lines()) == ["test", "train"]
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["hyperparameters"]["seed"] == 3 and doc["hyperparameters"]["batch_size"] == 64
    assert doc["data"]["train"]["len"] == 200 and doc["data"]["train"]["name"] == "digits"
    assert [e["epoch"] for e in doc["checkpoints"]] == [0, 1, 2]
    # the same command again reproduces the run bit for bit; another lr needs --overwrite
    first = (out / "checkpoints" / "ckpt_00002.pt").read_bytes()
    assert invoke("train", *TINY, "--seed", "3", "--out", out).exit_code == 0
    assert (out / "checkpoints" / "ckpt_00002.pt").read_bytes() == first
    res = invoke("train", *TINY, "--seed", "3", "--out", out, "--lr", "0.05")
    assert isinstance(res.exception, LossAtlasError) and "--overwrite" in str(res.exception)
    res = invoke("train", *TINY, "--seed", "3", "--out", out, "--lr", "0.05", "--overwrite")
    assert res.exit_code == 0, res.output


def test_train_options_record_schedule_and_checkpoint_start(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    res = invoke("train", *TINY, "--record", "2", "--schedule", "step", "--milestones", "1",
                 "--out", a, "--no-figure")
    assert res.exit_code == 0, res.output
    run = load_run(a)
    assert run.steps.tolist() == [0, 2, 4, 6, 8] and not (a / "training.png").exists()  # 4/epoch
    assert run.lrs.tolist() == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01])
    res = invoke("train", *TINY, "--record", "none", "--checkpoint", a, "--index", "1",
                 "--out", b)
    assert res.exit_code == 0, res.output
    start = load_run(b).checkpoints[0]
    assert all(torch.equal(v, run.checkpoints[1][k]) for k, v in start.items())
    for bad, word in (("--record", "batch"), ("--milestones", "x"), ("--schedule", "linear")):
        res = invoke("train", *TINY, bad, word, "--out", tmp_path / "c")
        assert isinstance(res.exception, LossAtlasError), res.output
        assert bad.lstrip("-") in str(res.exception)


def test_resolvers_and_load_checkpoint(tmp_path):
    train, test = resolve_data("digits", train_size=50)
    assert len(train) == 50 and len(test) == 360
    net = resolve_model("mlp", train, width=8, seed=0)
    assert net(train.tensors[0][:2]).shape == (2, 10)
    again, _, _ = setup("mlp", "digits", seed=0, model_opts={"width": 8},
                        data_opts={"train_size": 50})
    assert all(torch.equal(v, of(again)[k]) for k, v in of(net).items())
    torch.save(net.state_dict(), tmp_path / "w.pt")
    torch.save({"state_dict": net.state_dict()}, tmp_path / "wrapped.pt")
    for f in ("w.pt", "wrapped.pt"):
        other = resolve_model("mlp", train, width=8, seed=1)
        load_checkpoint(other, tmp_path / f)
        assert all(torch.equal(v, of(other)[k]) for k, v in of(net).items())
    with pytest.raises(LossAtlasError, match="--index"):
        load_checkpoint(net, tmp_path / "w.pt", index=0)
    with pytest.raises(LossAtlasError, match="does not fit"):
        load_checkpoint(resolve_model("mlp", train, width=4), tmp_path / "w.pt")
    with pytest.raises(LossAtlasError, match="does not exist"):
        load_checkpoint(net, tmp_path / "nope.pt")
    with pytest.raises(LossAtlasError, match="manifest"):
        load_checkpoint(net, tmp_path)
    assert parse_options(["width=64", "act=tanh", "ratio=0.5", "dims=[1, 2]"]) == {
        "width": 64, "act": "tanh", "ratio": 0.5, "dims": [1, 2]}
    with pytest.raises(LossAtlasError, match="KEY=VALUE"):
        parse_options(["width"])
    assert model_options(width=3, depth=None, extra=["bias=False"]) == {"width": 3, "bias": False}
    assert slug("pkg.mod:make") == "pkg.mod-make"


def test_demo_is_the_atlas_of_the_default_run(tmp_path, monkeypatch):
    """`lossatlas demo` trains the default run (read back on a rerun) and writes the atlas;
    a failing section is shown as failed and exits 1 while the others run."""
    from lossatlas.report import registry
    from lossatlas.report.registry import Output

    monkeypatch.setenv("LOSSATLAS_QUIET", "1")
    out = tmp_path / "atlas"
    res = invoke("demo", "--out", out, "--quick", "--epochs", "3", "--no-sweep",
                 "--section", "training")
    assert res.exit_code == 0, res.output
    assert (out / "index.html").is_file() and len(load_run(out / "run")) == 4
    doc = json.loads((out / "atlas.json").read_text())
    assert [s["status"] for s in doc["sections"] if s["name"] == "training"] == ["computed"]
    mtime = (out / "run" / "manifest.json").stat().st_mtime_ns

    def boom(ctx, opts) -> Output:
        raise RuntimeError("boom")

    monkeypatch.setitem(registry.SECTIONS, "boom", registry.Section("boom", "Boom", boom))
    res = invoke("demo", "--out", out, "--quick", "--epochs", "3", "--no-sweep",
                 "--section", "training", "--section", "boom")
    assert res.exit_code == 1, res.output
    assert (out / "run" / "manifest.json").stat().st_mtime_ns == mtime  # the run was reused
    doc = json.loads((out / "atlas.json").read_text())
    status = {s["name"]: s["status"] for s in doc["sections"]}
    assert status["training"] == "reused" and status["boom"] == "failed"
    assert "RuntimeError: boom" in (out / "index.html").read_text()


def test_demo_default_training_reaches_high_accuracy(tmp_path):
    from lossatlas.report.runspec import ensure_run

    run = ensure_run(tmp_path / "run", demo_mod.default_recipe(), progress=False)
    assert len(run) == demo_mod.DEFAULTS["epochs"] + 1
    assert run.train_acc[-1] > 0.99 and run.test_acc[-1] > 0.95
