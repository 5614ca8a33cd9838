"""The curvature commands end to end: train --track, sharpness, blocks; the figures they draw."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

import lossatlas as la
from lossatlas.cli import app
from lossatlas.plot.tracking import sharpness_curves

TINY = ["--data-arg", "train_size=300", "--width", "8", "--epochs", "6", "--momentum", "0",
        "--weight-decay", "0", "--batch-size", "100000", "--lr", "0.5", "--record", "2"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_train_track_writes_the_table_and_the_figure_and_the_values_are_exact(tmp_path,
                                                                             saved_figures):
    out = tmp_path / "run"
    res = invoke("train", *TINY, "--track", "sharpness:every=2,k=2,tol=1e-6", "--out", out)
    assert res.exit_code == 0, res.output
    assert "sharpness: 4 measurements" in res.output
    assert (out / "sharpness.csv").is_file()
    run = la.load_run(out)
    tab = run.track("sharpness")
    lam = saved_figures["sharpness.png"].axes[0].get_lines()[0]  # λ_max against the step
    np.testing.assert_allclose(lam.get_ydata(), tab["lambda_max"])
    assert tab["step"].tolist() == [0, 2, 4, 6] == run.steps.tolist()
    model = la.zoo.build("mlp", in_features=64, num_classes=10, width=8)
    train, _ = la.datasets.load("digits", train_size=300)
    for i in (0, 3):  # an independent fresh Lanczos at the recorded checkpoint of that step
        run.load_into(model, i)
        fresh = la.hessian.eigs(la.Objective(model, train), k=2, tol=1e-8, seed=7).values
        assert np.allclose([tab["lambda_2"][i], tab["lambda_1"][i]], fresh, rtol=1e-5)
    bad = invoke("train", *TINY, "--track", "sharpness:every=two", "--out", tmp_path / "x")
    assert bad.exit_code != 0 and "every='two'" in str(bad.exception) + bad.output


def test_sharpness_curves_draw_lambda_threshold_loss_and_preconditioned():
    step = np.arange(0, 50, 10.0)
    gd = {"step": step, "lambda_max": np.array([1.0, 1.5, 1.9, 2.0, 2.0]),
          "threshold": np.full(5, 2.0), "two_over_lr": np.full(5, 2.0),
          "train_loss": np.array([1, 0.5, 0.3, 0.2, 0.1])}
    adam = {**gd, "threshold": np.full(5, np.nan), "two_over_lr": np.full(5, 2000.0),
            "precond_lambda_max": np.array([np.nan, 30, 36, 38, 38]),
            "precond_threshold": np.full(5, 38.0)}
    fig = sharpness_curves({"GD": gd, "Adam": adam})
    ax, ax_loss, ax_pre = fig.axes[0], fig.axes[2], fig.axes[1]
    labels = [line.get_label() for line in ax.lines]
    assert labels == ["GD: λ_max(H)", "GD: 2/η", "Adam: λ_max(H)"]  # no 2/η line for Adam
    assert np.array_equal(ax.lines[1].get_ydata(), gd["threshold"])
    assert len(ax_loss.lines) == 2 and ax_loss.get_yscale() == "log"
    assert [line.get_label() for line in ax_pre.lines][:2] == ["Adam: λ_max(P⁻¹H)",
                                                              "Adam: (2+2β₁)/((1−β₁)η)"]


def test_sharpness_and_blocks_commands(tmp_path, saved_figures):
    out = tmp_path / "run"
    assert invoke("train", *TINY, "--out", out).exit_code == 0
    res = invoke("sharpness", "--checkpoint", out, "--data-arg", "train_size=300", "--width",
                 "8", "--rho", "0.05", "--norm", "linf", "--out", tmp_path / "s.h5")
    assert res.exit_code == 0, res.output
    saved = la.load(tmp_path / "s.h5")
    model = la.zoo.build("mlp", in_features=64, num_classes=10, width=8)
    la.load_run(out).load_into(model)
    train, _ = la.datasets.load("digits", train_size=300)
    want = la.sharpness.worst_case(la.Objective(model, train), 0.05, norm="linf")
    assert np.isclose(saved.value, want.value, rtol=1e-6)
    assert f"{want.value:.6g}" in res.output
    res = invoke("blocks", "--checkpoint", out, "--data-arg", "train_size=300", "--width", "8",
                 "--steps", "10", "--out", tmp_path / "b.h5")
    assert res.exit_code == 0, res.output
    assert "output" in res.output
    blocks = la.load(tmp_path / "b.h5")
    assert blocks.types == ["mlp", "output"]
    ax, ax_js = saved_figures["b-blocks.png"].axes[:2]  # densities; JS distances (+ colorbar)
    assert len(ax.get_lines()) == len(blocks.names)  # one density per block
    assert ax_js.get_images()[0].get_array().shape == (len(blocks.names),) * 2
