"""The options every command shares (cli/options.py): ``--bn recalibrate`` reaches ``hessian``,
``connect`` and ``mine``; the one ``--split`` check; ``curve -D A -D B`` is ``curves``; the
decorator that turns an option dataclass into options."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import lossatlas as la
from lossatlas.cli import app
from lossatlas.cli.options import Evaluation, Source, shared_options
from lossatlas.core.errors import LossAtlasError

#: a CNN with BatchNorm on 64 digit images: keep and recalibrate give other numbers.
BN_NET = ["--model", "cnn", "--data-arg", "train_size=64", "--data-arg", "image=True",
          "--width", "2", "--depth", "1"]
TINY = ["--data-arg", "train_size=100", "--width", "8"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("LOSSATLAS_QUIET", "1")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _bn_net():
    return Source(model="cnn", width=2, depth=1,
                  data_arg=["train_size=64", "image=True"]).load()


def test_bn_recalibrate_reaches_hessian(tmp_path):
    values = {}
    for bn in ("keep", "recalibrate"):
        out = tmp_path / f"{bn}.h5"
        r = invoke("hessian", *BN_NET, "--top", "1", "--bottom", "0", "--bn", bn, "-o", out)
        assert r.exit_code == 0, r.output
        res = la.load(out)
        assert res.objective["bn"] == bn
        values[bn] = float(res.values[-1])
    net, train, _ = _bn_net()
    obj = la.Objective(net, train, batch_size=1024, bn="recalibrate")
    exact = float(la.hessian.eigs(obj, k=1, which="LA", tol=1e-6).values[-1])
    assert values["recalibrate"] == pytest.approx(exact, rel=1e-2)
    assert abs(values["keep"] - values["recalibrate"]) > 0.1 * abs(exact)


def test_bn_recalibrate_reaches_mine(tmp_path):
    out = tmp_path / "mined.h5"
    r = invoke("mine", "w-peak", *BN_NET, "--epochs", "1", "--points", "5", "--bn", "recalibrate",
               "-o", out)
    assert r.exit_code == 0, r.output
    assert la.load(out).settings["bn"] == "recalibrate"
    assert out.with_suffix(".png").is_file()


def test_bn_reaches_connect_and_keep_is_refused_with_batchnorm(tmp_path):
    net, _, _ = _bn_net()
    paths = []
    for s in (0, 1):
        torch.manual_seed(s)
        for p in net.parameters():
            p.data.normal_(0, 0.3)
        paths.append(tmp_path / f"m{s}.pt")
        torch.save(net.state_dict(), paths[-1])
    out = tmp_path / "mc.h5"
    r = invoke("connect", *paths, *BN_NET, "--epochs", "1", "--dense", "0", "--bn", "recalibrate",
               "-o", out)
    assert r.exit_code == 0, r.output
    res = la.load(out)
    assert res.provenance["bn"] == "recalibrate" and res.settings["bn"] == "recalibrate"
    r = invoke("connect", *paths, *BN_NET, "--epochs", "1", "--bn", "keep", "-o",
               tmp_path / "keep.h5")
    assert r.exit_code != 0 and isinstance(r.exception, LossAtlasError)
    assert "--bn keep" in str(r.exception) and not (tmp_path / "keep.h5").exists()


@pytest.mark.parametrize("argv", [["curve", *TINY, "--points", "3"],
                                  ["hessian", *TINY, "--top", "1"],
                                  ["mine", "w-peak", *TINY, "--bn", "sometimes"]],
                         ids=["curve-split", "hessian-split", "mine-bn"])
def test_split_and_bn_are_checked_once_with_one_sentence(argv, tmp_path, monkeypatch, capsys):
    from lossatlas.cli import main

    monkeypatch.chdir(tmp_path)
    bad = [] if "--bn" in argv else ["--split", "validation"]
    monkeypatch.setattr(sys, "argv", ["lossatlas", *argv, *bad])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2
    if bad:
        assert err == "error: --split 'validation' is unknown; use train or test"
    else:
        assert err == "error: --bn 'sometimes' is unknown; use keep or recalibrate"
    assert list(tmp_path.iterdir()) == []


def test_curve_with_several_directions_is_curves(tmp_path):
    specs = ["-D", "gaussian:filter:seed=0", "-D", "gaussian:layer:seed=3"]
    r = invoke("curve", *TINY, *specs, "--points", "7", "-b", "512", "--span", "-1", "2",
               "-o", tmp_path / "a.h5")
    assert r.exit_code == 0, r.output
    r2 = invoke("curves", *TINY, *specs, "--points", "7", "--span=-1,2",
                "-o", tmp_path / "b.png")
    assert r2.exit_code == 0, r2.output
    for i in range(2):
        a, b = la.load(tmp_path / f"a-{i}.h5"), la.load(tmp_path / f"b-{i}.h5")
        np.testing.assert_array_equal(a.x, b.x)
        # two runs may pick different surface engines by timing (last bits differ, ~1e-7)
        np.testing.assert_allclose(a.loss, b.loss, rtol=1e-6)
        assert a.x[0] == -1 and a.x[-1] == 2
    assert (tmp_path / "a.png").is_file() and (tmp_path / "b.png").is_file()
    assert r.output.replace("a-", "b-").replace("a.png", "b.png") == r2.output
    hidden = {c.callback.__name__: c.hidden for c in app.registered_commands}
    assert hidden["curves"] and not hidden["curve"]  # the old spelling is not listed


def test_x_direction_errors_name_their_option(tmp_path):
    r = invoke("surface", *TINY, "--resolution", "2", "--y-direction", "eigen:XX",
               "-o", tmp_path / "s.h5")
    assert r.exit_code != 0 and str(r.exception).startswith("--y-direction 'eigen:XX'")


@dataclass(frozen=True)
class Grid:
    """A command's own option group."""

    points: Annotated[int, typer.Option(help="Points.")] = 5


def test_shared_options_expand_dataclasses_with_command_defaults():
    seen = {}
    cli = typer.Typer()

    @cli.command()
    @shared_options(batch_size=64, omit=("include", "exclude", "device"))
    def probe(*, src: Source, grid: Grid, ev: Evaluation, flag: bool = False) -> None:
        seen.update(src=src, grid=grid, ev=ev, flag=flag)

    r = CliRunner().invoke(cli, ["--model", "cnn", "--points", "9", "--bn", "recalibrate"])
    assert r.exit_code == 0, r.output
    assert seen["src"] == Source(model="cnn")
    assert seen["grid"] == Grid(points=9)
    assert seen["ev"] == Evaluation(batch_size=64, bn="recalibrate")
    assert "--include" not in CliRunner().invoke(cli, ["--help"]).output
    with pytest.raises(TypeError, match="no option group field"):
        shared_options(no_such_option=1)(probe.__wrapped__)


@pytest.mark.parametrize("argv, phrase", [
    (["curve", "--points", "many"], "Invalid value for '--points'"),
    (["curve", "--no-such-option"], "No such option: --no-such-option"),
    (["sharpness"], "Missing option '--rho'"),
], ids=["type", "unknown", "missing"])
def test_usage_errors_are_one_line(argv, phrase, monkeypatch, capsys):
    from lossatlas.cli import main

    monkeypatch.setattr(sys, "argv", ["lossatlas", *argv])
    with pytest.raises(SystemExit) as info:
        main()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert info.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {phrase}") and f"lossatlas {argv[0]} --help" in lines[0]
