"""The atlas (lossatlas.report): its numbers equal the section files' numbers and independent
computations (a dense Hessian for λ_max / λ_min), reruns read unchanged sections back, a changed
option recomputes that section only, and runs rebuild their model and data from the manifest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import lossatlas as la
from lossatlas.cli import app
from lossatlas.core.errors import LossAtlasError
from lossatlas.report import registry
from lossatlas.report.build import SUMMARY_KEYS

#: A tiny atlas: few samples, a narrow MLP, low resolutions.
TINY = {"surface": {"resolution": 5}, "eigen_surface": {"resolution": 5},
        "trajectory": {"resolution": 5}, "curves": {"points": 11, "gaussians": 2},
        "hessian": {"steps": 20, "products": 10, "samples": 10},
        "mined": {"epochs": 1, "points": 11}, "connectivity": {"epochs": 2, "dense": 5,
                                                               "cka_samples": 100}}
SWEEP = {"name": "tiny", "seeds": [0, 1], "data": {"name": "digits", "train_size": 150},
         "model": {"name": "mlp", "depth": 1},
         "train": {"epochs": 2, "lr": 0.05, "batch_size": 50},
         "load": {"param": "width", "values": [4, 16]},
         "temperature": {"param": "lr", "values": [0.05]},
         "measure": {"hessian_samples": 50, "cka_samples": 100, "connect": {"epochs": 1}}}


def tiny_run(path: Path, seed: int = 0, epochs: int = 3):
    train, test = la.datasets.load("digits", train_size=200)
    model = la.zoo.build("mlp", dataset=train, width=12, seed=seed)
    return la.train(model, train, test_data=test, epochs=epochs, batch_size=50, seed=seed,
                    out=path, progress=False)


# a run and its whole atlas (about 18 s on 2 cores): the tests that use it are marked slow
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    os.environ["LOSSATLAS_QUIET"] = "1"
    root = tmp_path_factory.mktemp("atlas")
    run = tiny_run(root / "run")
    la.sweep.run(SWEEP, root / "sweep", progress=False)
    res = la.atlas(run, root / "out", quick=True, sweep=root / "sweep", options=TINY,
                   progress=False)
    return root, run, res


@pytest.mark.slow
def test_atlas_writes_every_section(built):
    root, _run, res = built
    doc = json.loads((root / "out" / "atlas.json").read_text())
    assert res.ok, [s.get("error") for s in doc["sections"]]
    names = [s["name"] for s in doc["sections"]]
    assert names == ["training", "curves", "surface", "eigen_surface", "hessian", "trajectory",
                     "mined", "connectivity", "phase", "phase_diagram"]
    assert all(s["status"] == "computed" for s in doc["sections"])
    assert set(SUMMARY_KEYS) <= set(doc["summary"])
    assert all(doc["summary"][k] is not None for k in SUMMARY_KEYS)
    for s in doc["sections"]:
        assert s["command"] and s["seconds"] >= 0
        for f in s["files"] + [f["path"] for f in s["figures"]]:
            assert (root / "out" / f).is_file(), f
    page = (root / "out" / "index.html").read_text()
    assert page.count('s.src="plotly.min.js"') == 1 and "cdn" not in page.lower()
    assert (root / "out" / "plotly.min.js").is_file()
    assert (root / "out" / "run_b" / "manifest.json").is_file()  # trained from the recipe
    assert la.load_run(root / "out" / "run_b").info["seed"] == 1


@pytest.mark.slow
def test_atlas_numbers_equal_the_section_files(built):
    root, run, res = built
    out, s = root / "out", res.summary
    hess = la.load(out / "hessian" / "hessian.h5")
    assert s["lambda_max"] == pytest.approx(float(np.max(hess.values)), rel=1e-12)
    assert s["lambda_min"] == pytest.approx(float(np.min(hess.values)), rel=1e-12)
    assert s["trace"] == pytest.approx(hess.trace, rel=1e-12)
    assert s["fitting_error"] == pytest.approx(
        la.load(out / "trajectory" / "path.h5").fitting_error, rel=1e-12)
    assert s["fitting_error_random"] == pytest.approx(
        la.load(out / "trajectory" / "random-0.h5").fitting_error, rel=1e-12)
    conn = la.load(out / "connectivity" / "mode_connectivity.h5")
    assert s["mc"] == pytest.approx(conn.mc, rel=1e-12)
    gauss = [la.load(out / "curves" / f"curves-{i}.h5") for i in range(2)]
    assert s["stationary_points"] == pytest.approx(
        np.mean([la.shapes.stationary_points(c.loss) for c in gauss]))
    # one file per curve, named as the section's commands name them (run B after the Gaussians
    # in `curve -D ... --out curves.png`; the curve toward the final model in to-final.h5)
    to_final = la.load(out / "curves" / "to-final.h5")
    to_b = la.load(out / "curves" / "curves-2.h5")
    assert (to_final.x.min(), to_final.x.max()) == (-1.0, 1.5)
    assert (to_b.x.min(), to_b.x.max()) == (-1.0, 2.0)
    assert s["train_acc"] == pytest.approx(run.train_acc[-1])
    assert s["test_acc"] == pytest.approx(run.test_acc[-1])
    # CKA and l2 recomputed from the two runs' weights
    from lossatlas.report.runspec import rebuild

    a, train, _ = rebuild(run)
    b, _, _ = rebuild(la.load_run(out / "run_b"))
    assert s["l2"] == pytest.approx(la.similarity.l2_distance(a, b), rel=1e-9)
    assert s["cka"] == pytest.approx(la.similarity.model_cka(a, b, train, m=100, seed=0),
                                     rel=1e-6)
    assert s["phase"] == la.taxonomy.classify(
        {"train_loss": float(run.train_loss[-1]), "mc": conn.mc, "cka": s["cka"]}).label
    # permutation alignment (default connectivity.align=weights): the numbers are the file's
    al = la.load(out / "connectivity" / "mode_connectivity-aligned.h5")
    assert al.align == "weights" and s["mc_unaligned"] == s["mc"]
    assert s["mc_aligned"] == pytest.approx(al.mc, rel=1e-12)
    assert s["barrier_aligned"] == pytest.approx(la.connect.barrier(al.t, al.linear_error))
    assert s["barrier_unaligned"] == pytest.approx(al.unaligned_linear_barrier, rel=1e-12)
    # the line before alignment is the unaligned curve's line (same ends, same t), and the
    # permuted run B computes the same function as run B (same loss at t = 1)
    assert s["barrier_unaligned"] == pytest.approx(la.connect.barrier(conn.t, conn.linear_error))
    assert al.unaligned_linear_mc == pytest.approx(conn.linear_mc)
    assert al.loss[-1] == pytest.approx(conn.loss[-1], rel=1e-5)
    sec = {d["name"]: d for d in res.doc["sections"]}["connectivity"]
    assert {k: sec["numbers"][k] for k in ("mc_aligned", "barrier_aligned")} == {
        k: s[k] for k in ("mc_aligned", "barrier_aligned")}


@pytest.mark.slow
def test_atlas_lambda_max_equals_a_dense_hessian(built):
    """λ_max and λ_min of the page against eigvalsh of the full Hessian of the tiny MLP."""
    _root, run, res = built
    from lossatlas.report.runspec import rebuild

    model, train, _ = rebuild(run)
    X, y = train.tensors
    names = [n for n, p in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    model.double()

    def loss(flat):
        params, i = {}, 0
        for n, shp in zip(names, shapes):
            k = int(np.prod(shp))
            params[n] = flat[i:i + k].reshape(shp)
            i += k
        out = torch.func.functional_call(model, params, (X.double(),))
        return torch.nn.functional.cross_entropy(out, y)

    H = torch.autograd.functional.hessian(loss, flat0)
    ev = torch.linalg.eigvalsh(H)
    assert res.summary["lambda_max"] == pytest.approx(float(ev[-1]), rel=1e-4)
    assert res.summary["lambda_min"] == pytest.approx(float(ev[0]), rel=1e-3, abs=1e-6)


@pytest.mark.slow
def test_rerun_reads_back_and_one_option_recomputes_one_section(built, tmp_path):
    root, run, _ = built
    out = tmp_path / "copy"
    shutil.copytree(root / "out", out)
    res = la.atlas(run, out, quick=True, sweep=root / "sweep", options=TINY, progress=False)
    assert {s["status"] for s in res.doc["sections"]} == {"reused"}
    assert res.summary == json.loads((root / "out" / "atlas.json").read_text())["summary"]
    opts = {**TINY, "surface": {"resolution": 7}}
    res = la.atlas(run, out, quick=True, sweep=root / "sweep", options=opts, progress=False)
    status = {s["name"]: s["status"] for s in res.doc["sections"]}
    assert status.pop("surface") == "computed" and set(status.values()) == {"reused"}
    assert la.load(out / "surface" / "surface.h5").loss.shape == (7, 7)
    # an interrupted atlas: a section without its section.json is computed again, alone
    (out / "mined" / "section.json").unlink()
    res = la.atlas(run, out, quick=True, sweep=root / "sweep", options=opts, progress=False)
    status = {s["name"]: s["status"] for s in res.doc["sections"]}
    assert status.pop("mined") == "computed" and set(status.values()) == {"reused"}


@pytest.mark.slow
def test_connectivity_align_option_is_in_the_cache_key(built, tmp_path):
    """connectivity.align=none recomputes the section without the aligned curve or numbers."""
    root, run, _ = built
    out = tmp_path / "noalign"
    shutil.copytree(root / "out", out)
    opts = {**TINY, "connectivity": {**TINY["connectivity"], "align": "none"}}
    res = la.atlas(run, out, quick=True, sweep=root / "sweep", options=opts,
                   only=["connectivity"], progress=False)
    sec = {d["name"]: d for d in res.doc["sections"]}["connectivity"]
    assert sec["status"] == "computed" and "mc_aligned" not in res.summary
    assert not (out / "connectivity" / "mode_connectivity-aligned.h5").exists()
    assert res.summary["mc"] == pytest.approx(la.load(out / "connectivity" /
                                                      "mode_connectivity.h5").mc)
    bad = la.atlas(run, out, quick=True, options={"connectivity": {"align": "nope"}},
                   only=["connectivity"], progress=False)
    sec = {d["name"]: d for d in bad.doc["sections"]}["connectivity"]
    assert not bad.ok and "connectivity.align='nope' is unknown" in sec["error"]


@pytest.mark.slow
def test_a_new_section_is_one_function(built, tmp_path, monkeypatch):
    """A section registered later (here one that applies only when the run has a metric)
    appears on the page, after the built-ins, and is skipped where it does not apply."""
    _root, run, _ = built
    from lossatlas.report.registry import Output, section

    monkeypatch.setattr(registry, "SECTIONS", dict(registry.SECTIONS))

    @section("epochs_seen", "Epochs seen", options={"scale": 2},
             when=lambda ctx: "epoch" in ctx.run.manifest[-1])
    def epochs_seen(ctx, opts):
        return Output(numbers={"scaled": opts["scale"] * ctx.run.manifest[-1]["epoch"]},
                      summary={"epochs_seen": ctx.run.manifest[-1]["epoch"]},
                      caption=["The last epoch, scaled."], command=["echo"])

    out = tmp_path / "new"
    res = la.atlas(run, out, only=["epochs_seen", "training"], progress=False)
    sec = {s["name"]: s for s in res.doc["sections"]}
    assert sec["epochs_seen"]["numbers"] == {"scaled": 6} and res.summary["epochs_seen"] == 3
    assert sec["curves"]["status"] == "skipped" and "Epochs seen" in res.page.read_text()
    with pytest.raises(LossAtlasError, match=r"surface\.nope is unknown"):
        la.atlas(run, out, options={"surface": {"nope": 1}}, progress=False)


@pytest.mark.slow
def test_sharpness_section_shows_the_runs_table(tmp_path, saved_figures):
    """A run trained with la.track.Sharpness gets the section, right after the training curves,
    and its numbers are the table's; a run without the table has no such section and no
    summary key; a rerun reads it back, a changed table recomputes it."""
    train, test = la.datasets.load("digits", train_size=120)
    model = la.zoo.build("mlp", dataset=train, width=8, seed=0)
    run = la.train(model, train, test_data=test, epochs=2, batch_size=40, seed=0,
                   out=tmp_path / "run", progress=False,
                   callbacks=[la.track.Sharpness(every=2)])
    res = la.atlas(run, tmp_path / "out", only=["training", "sharpness"], progress=False)
    sec = {s["name"]: s for s in res.doc["sections"]}
    assert [s["name"] for s in res.doc["sections"]][:2] == ["training", "sharpness"]
    assert sec["sharpness"]["status"] == "computed", sec["sharpness"].get("error")
    table = run.track("sharpness")
    nums = sec["sharpness"]["numbers"]
    assert table["step"].tolist() == [0.0, 2.0, 4.0, 6.0]
    assert res.summary["lambda_max_final"] == table["lambda_max"][-1]
    # the last row (step 6 = 2 epochs of 3 batches) is the final model: a cold-started
    # Lanczos on the rebuilt final model gives the same λ_max
    from lossatlas.report.runspec import rebuild

    final, data, _ = rebuild(run)
    cold = la.hessian.eigs(la.Objective(final, data), 1, "LA", 1e-6, seed=7)
    assert res.summary["lambda_max_final"] == pytest.approx(float(cold.values[-1]), rel=1e-4)
    assert nums["lambda_max_initial"] == table["lambda_max"][0]
    assert nums["lambda_max_peak"] == max(table["lambda_max"]) and nums["every"] == 2
    assert res.summary["sharpness_threshold"] == pytest.approx((2 + 2 * 0.9) / 0.1)
    assert nums["products_median"] == float(np.median(table["products"][1:]))
    lam = saved_figures["sharpness.png"].axes[0].get_lines()[0]  # λ_max against the step
    np.testing.assert_allclose(lam.get_xdata(), table["step"])
    np.testing.assert_allclose(lam.get_ydata(), table["lambda_max"])
    assert "--track sharpness:every=2" in sec["sharpness"]["command"][0]
    assert "edge of stability" in " ".join(sec["sharpness"]["caption"])
    again = la.atlas(run, tmp_path / "out", only=["training", "sharpness"], progress=False)
    assert {s["name"]: s["status"] for s in again.doc["sections"]}["sharpness"] == "reused"
    csv = tmp_path / "run" / "sharpness.csv"
    csv.write_text(csv.read_text().replace(repr(float(table["lambda_max"][-1])), "123.5"))
    again = la.atlas(run, tmp_path / "out", only=["training", "sharpness"], progress=False)
    assert again.summary["lambda_max_final"] == 123.5
    plain = tiny_run(tmp_path / "plain", epochs=1)
    res = la.atlas(plain, tmp_path / "out2", only=["training"], progress=False)
    assert "sharpness" not in [s["name"] for s in res.doc["sections"]]
    assert "lambda_max_final" not in res.summary


@pytest.mark.slow
def test_cli_atlas_prints_the_page(built, tmp_path):
    root, _run, _ = built
    out = tmp_path / "cli"
    shutil.copytree(root / "out", out)
    r = CliRunner().invoke(app, ["atlas", str(root / "run"), "--out", str(out), "--quick",
                                 "--sweep", str(root / "sweep"), "--set",
                                 "surface.resolution=5", "--section", "training",
                                 "--section", "surface"])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1].endswith("index.html")
    doc = json.loads((out / "atlas.json").read_text())
    assert {s["name"]: s["status"] for s in doc["sections"]}["surface"] in ("reused", "kept")


@pytest.mark.slow
def test_run_rebuilds_from_its_manifest_with_a_file_factory(tmp_path, monkeypatch):
    """`--model file.py:factory` and `pkg.mod:factory` from the current folder; the run folder
    then brings model, data and options to every command; a misfit names keys and --model."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOSSATLAS_QUIET", "1")
    (tmp_path / "mynet.py").write_text(
        "import torch\n"
        "def make(in_features, num_classes, hidden=8):\n"
        "    return torch.nn.Sequential(torch.nn.Linear(in_features, hidden), torch.nn.ReLU(),"
        " torch.nn.Linear(hidden, num_classes))\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    shutil.copy(tmp_path / "mynet.py", tmp_path / "pkg" / "nets.py")
    cli = CliRunner()
    r = cli.invoke(app, ["train", "--model", "mynet.py:make", "--model-arg", "hidden=6",
                         "--data-arg", "train_size=100", "--epochs", "1", "--out", "r1"])
    assert r.exit_code == 0, r.output
    info = la.load_run("r1").info
    assert info["model"]["build"] == {"name": f"{tmp_path / 'mynet.py'}:make",
                                      "options": {"hidden": 6}, "seed": 0}
    assert info["data"]["train"]["load"]["options"]["train_size"] == 100
    r = cli.invoke(app, ["curve", "-c", "r1", "--points", "3", "--out", "c.h5"])
    assert r.exit_code == 0, r.output  # no --model, --data: the run's own
    assert la.load("c.h5").meta["num_samples"] == 100
    r = cli.invoke(app, ["train", "--model", "pkg.nets:make", "--epochs", "1", "--out", "r2",
                         "--data-arg", "train_size=100"])
    assert r.exit_code == 0, r.output
    r = cli.invoke(app, ["curve", "-c", "r1/checkpoints/ckpt_00001.pt", "--points", "3"])
    assert r.exit_code == 2 or isinstance(r.exception, LossAtlasError)
    msg = str(r.exception) if r.exception else r.output
    assert "4 missing keys" in msg and "4 unexpected keys" in msg and "--model" in msg
    model = la.zoo.build("mlp", in_features=64, num_classes=10, width=5)
    with pytest.raises(LossAtlasError, match=r"--model .*mynet.py:make --model-arg hidden=6"):
        la.load_run("r1").load_into(model)
    r = cli.invoke(app, ["surface", "--resolution", "3", "--data-arg", "train_size=50",
                         "--plot", "contour", "--out", "s.h5"])
    assert r.exit_code == 0 and "maps a random initialization" in r.output


def test_progress_bar_closes_at_its_real_count(monkeypatch):
    from rich.progress import Progress

    from lossatlas.core import progress as _progress

    seen = {}

    class Spy(Progress):
        def __exit__(self, *exc):
            task = self.tasks[0]
            seen.update(total=task.total, completed=task.completed)
            return super().__exit__(*exc)

    monkeypatch.setattr(_progress, "make_progress", lambda: Spy(disable=True))
    monkeypatch.delenv("LOSSATLAS_QUIET", raising=False)
    for i in _progress.track(range(1000), "lanczos", disable=False):
        if i == 143:
            break
    assert seen == {"total": 144, "completed": 144}


CHROMIUM = os.environ.get("LOSSATLAS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def open_page(page_path: Path, screenshot: Path) -> dict:
    """Open the page in headless Chromium (Playwright, the system's chromium); return the
    console errors, requests, images not loaded and interactive plots not drawn."""
    sync_api = pytest.importorskip("playwright.sync_api")
    errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--use-gl=swiftshader", "--enable-unsafe-swiftshader",
                  "--ignore-gpu-blocklist"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            page.wait_for_function(
                "() => [...document.querySelectorAll('.plot')].every(d => d._fullData)",
                timeout=60_000)
            state = page.evaluate(
                "() => ({images: [...document.images].map(i => [i.getAttribute('src'),"
                " i.complete && i.naturalWidth > 0]),"
                " plots: [...document.querySelectorAll('.plot')].map(d => [d.id,"
                " !!d.querySelector('.main-svg') && !!d._fullData && d._fullData.length > 0]),"
                " sections: document.querySelectorAll('section').length})")
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "requests": requests, **state}


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=(
    f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get install -y chromium; "
    "`make test` does) to run the browser test"))
@pytest.mark.slow
def test_atlas_page_opens_in_chromium(built, tmp_path):
    """No console error, every image loaded, every interactive plot drawn, no network; the
    screenshot is kept next to the page (atlas-screenshot.png) to be looked at."""
    root, _run, _res = built
    shot = root / "out" / "atlas-screenshot.png"
    state = open_page(root / "out" / "index.html", shot)
    assert not state["errors"], state["errors"]
    assert all(u.startswith(("file:", "data:")) for u in state["requests"]), state["requests"]
    assert state["images"] and all(ok for _, ok in state["images"]), state["images"]
    assert len(state["plots"]) == 2 and all(ok for _, ok in state["plots"]), state["plots"]
    assert state["sections"] == 10 and shot.stat().st_size > 10_000
    size = sum(p.stat().st_size for p in (root / "out").rglob("*")
               if p.is_file() and p.suffix in (".html", ".png", ".js", ".json"))
    assert size < 10e6


def test_recipe_keeps_the_optimizer_so_run_b_is_trained_like_run_a(tmp_path):
    from lossatlas.report.runspec import recipe_of

    train, _ = la.datasets.load("digits", train_size=60)
    model = la.zoo.build("mlp", dataset=train, width=6, seed=0)
    run = la.train(model, train, epochs=1, lr=0.01, batch_size=30, optimizer="adam",
                   betas=(0.8, 0.99), out=tmp_path / "adam", progress=False)
    r = recipe_of(la.load_run(run.path))
    assert r.train["optimizer"] == "adam" and r.train["betas"] == (0.8, 0.99)
    sgd = la.train(la.zoo.build("mlp", dataset=train, width=6, seed=0), train, epochs=1,
                   lr=0.01, batch_size=30, out=tmp_path / "sgd", progress=False)
    assert "optimizer" not in recipe_of(la.load_run(sgd.path)).train
