"""Hugging Face transformers end to end: tiny GPT-2 / BERT from configs, trained by la.train on
the token sets, their loss against the library's own, tied embeddings exact in every landscape
engine, HVPs through SDPA against finite differences, Hessian blocks, trajectories, the CLI.

Skipped as a whole when ``transformers`` (the ``hf`` extra) is not installed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lossatlas as la
from lossatlas.core.errors import LossAtlasError

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def lm_data():
    return la.datasets.load("tokens", task="lm", n_train=192, n_test=64)


@pytest.fixture(scope="module")
def gpt2(lm_data):
    """A tiny GPT-2 trained for 2 epochs by la.train (a checkpoint every 3 steps)."""
    train, test = lm_data
    model = la.zoo.build("hf:gpt2-tiny", dataset=train, seed=0)
    run = la.train(model, train, epochs=2, lr=0.1, batch_size=32, seed=0, progress=False,
                   test_data=test, weight_decay=0.0, record=3)
    return model, run


def _load(work, model, point) -> None:
    """``work`` holds ``point`` (tied lm_head included: the state dict lists it twice)."""
    sd = {**model.state_dict(), **point}
    sd["lm_head.weight"] = point["transformer.wte.weight"]
    work.load_state_dict(sd)


def _direct_lm_loss(model, X, Y):
    """Cross-entropy of the next tokens computed from a plain forward, by hand."""
    with torch.no_grad():
        logits = model(X).logits
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                 Y[:, :-1].reshape(-1)))


def test_presets_and_config_files_build_the_library_classes(lm_data, tmp_path):
    train, _ = lm_data
    g = la.zoo.build("hf:gpt2-tiny", dataset=train, seed=0)
    assert type(g).__name__ == "GPT2LMHeadModel"
    assert g.lm_head.weight is g.transformer.wte.weight  # tied, one parameter
    names = [n for n, _ in g.named_parameters()]
    assert "lm_head.weight" not in names and "transformer.h.1.attn.c_attn.weight" in names
    assert g.config.n_positions == 12 and g.config.vocab_size == 16
    assert g.config._attn_implementation == "sdpa"
    again = la.zoo.build("hf:gpt2-tiny", dataset=train, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(g.parameters(), again.parameters()))
    tokens, _ = la.datasets.load("tokens")
    b = la.zoo.build("hf:bert-tiny", dataset=tokens, seed=0)
    assert type(b).__name__ == "BertForSequenceClassification"
    assert b.config.num_labels == 4 and b(tokens.X[:3]).logits.shape == (3, 4)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model_type": "gpt2", "n_embd": 32, "n_layer": 1,
                               "n_head": 2}))
    m = la.zoo.build(f"hf:{cfg}", dataset=train, task="lm")
    assert type(m).__name__ == "GPT2LMHeadModel" and m.config.n_embd == 32
    with pytest.raises(LossAtlasError, match="hf:gpt2-tiny"):
        la.zoo.build("gpt2", dataset=train)
    with pytest.raises(LossAtlasError, match="neither a preset"):
        la.zoo.build("hf:gpt5", dataset=train)
    with pytest.raises(LossAtlasError, match="vocab_size is required"):
        la.zoo.build("hf:gpt2-tiny", input_shape=(12,))


def test_la_train_fits_the_markov_chain(gpt2, lm_data):
    model, run = gpt2
    train, _ = lm_data
    losses = run.metric("train_loss")
    obj = la.Objective(model, train, batch_size=64)
    first = la.Objective(model, train, batch_size=64).loss(
        {k: v for k, v in run.checkpoints[0].items() if k in obj.names})
    assert obj.loss() < first - 0.3  # from ~log 16 = 2.77 well on the way down
    assert obj.loss() == pytest.approx(_direct_lm_loss(model, *train.tensors), abs=1e-5)
    assert losses[-1] == pytest.approx(obj.loss(), abs=1e-5) and losses[-1] < losses[0] - 0.3
    assert 0 < run.metric("train_acc")[-1] <= 1  # per-token accuracy, ignored tokens left out


def test_our_loss_equals_the_libraries_own_shifted_loss(gpt2, lm_data):
    """Pre-shifted targets with loss='cross_entropy' == HF's labels=input_ids (it shifts),
    through the Objective on dict batches (loss='model' passes labels to the model)."""
    model, _ = gpt2
    train, _ = lm_data
    X, Y = train.tensors
    ours = la.Objective(model, train, batch_size=50).loss()
    theirs = la.Objective(model, {"input_ids": X, "labels": X}, loss="model",
                          batch_size=None).loss()
    with torch.no_grad():
        direct = float(model(input_ids=X, labels=X).loss)
    assert ours == pytest.approx(theirs, abs=1e-6) and theirs == pytest.approx(direct, abs=1e-6)
    keyed = la.Objective(model, {"input_ids": X, "labels": Y}, batch_size=64).evaluate()
    assert keyed["loss"] == pytest.approx(ours, abs=1e-6)
    assert 0 < keyed["accuracy"] <= 1


@pytest.mark.parametrize("fast", [True, False, "affine"])
def test_tied_embeddings_are_exact_in_every_engine(gpt2, lm_data, fast):
    """Curve and surface values equal a direct evaluation of a model whose tied wte/lm_head
    parameter holds θ + a·d₁ + b·d₂ (the affine first-layer engine must not freeze lm_head)."""
    model, _ = gpt2
    train, _ = lm_data
    obj = la.Objective(model, train, batch_size=96)
    d1 = la.directions.gaussian(model, seed=0)
    d2 = la.directions.gaussian(model, seed=1)
    s = la.surface(obj, d1, d2, resolution=3, span=(-0.5, 0.5), fast=fast)
    c = la.curve(obj, d1, points=3, span=(-0.5, 0.5), fast=fast)
    work = la.zoo.build("hf:gpt2-tiny", dataset=train)
    X, Y = train.tensors
    theta = la.params.of(model)
    for i, a in enumerate(s.x):
        for j, b in enumerate(s.y):
            point = la.params.axpy(theta, [float(a), float(b)], [d1, d2])
            _load(work, model, point)
            assert work.lm_head.weight is work.transformer.wte.weight
            want = _direct_lm_loss(work, X, Y)
            assert s.loss[i, j] == pytest.approx(want, rel=2e-6, abs=2e-6), (fast, a, b)
    for i, a in enumerate(c.x):
        _load(work, model, la.params.axpy(theta, [float(a)], [d1]))
        assert c.loss[i] == pytest.approx(_direct_lm_loss(work, X, Y), rel=2e-6, abs=2e-6)


def test_hvp_through_sdpa_matches_finite_differences(gpt2, lm_data, capfd, monkeypatch):
    """H v (double backward, SDPA on its math kernel) against (g(θ+εv) − g(θ−εv)) / 2ε in
    float64; the fallback is announced in one line."""
    import lossatlas.core.attention as A

    monkeypatch.setattr(A, "_said_math", False)
    monkeypatch.delenv("LOSSATLAS_QUIET", raising=False)
    model, _ = gpt2
    train, _ = lm_data
    m64 = la.zoo.build("hf:gpt2-tiny", dataset=train).double()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    X, Y = train.tensors
    obj = la.Objective(m64, (X[:48], Y[:48]), batch_size=16)
    gen = torch.Generator().manual_seed(3)
    v = la.params.Point({k: torch.randn(t.shape, generator=gen, dtype=torch.float64)
                         for k, t in obj.center.items()})
    v = v * (1.0 / float(torch.cat([t.reshape(-1) for t in v.values()]).norm()))
    hv = obj.hvp(v)
    eps = 1e-4
    gp = obj.grad(la.params.axpy(obj.center, [eps], [v]))
    gm = obj.grad(la.params.axpy(obj.center, [-eps], [v]))
    fd = torch.cat([((gp[k] - gm[k]) / (2 * eps)).reshape(-1) for k in obj.names])
    got = torch.cat([hv[k].reshape(-1) for k in obj.names])
    assert float((got - fd).norm() / fd.norm()) < 1e-6
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if "math kernel" in ln]
    assert len(lines) == 1
    spec = la.hessian.eigs(obj, k=1, which="LA", params="transformer.h.*.attn.*")
    assert spec.values.shape == (1,) and np.isfinite(spec.values).all()
    assert all((k.startswith("transformer.h.") and ".attn." in k)
               or float(spec.vectors[0][k].abs().max()) == 0 for k in obj.names)


def test_surface_on_a_parameter_subset_from_the_cli(gpt2, lm_data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from lossatlas.cli import app

    monkeypatch.setenv("LOSSATLAS_QUIET", "1")
    model, _ = gpt2
    ckpt = tmp_path / "g.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "s.h5"
    args = ["surface", "--model", "hf:gpt2-tiny", "--data", "tokens", "--data-arg", "task=lm",
            "--data-arg", "n_train=192", "--data-arg", "n_test=64", "--checkpoint", str(ckpt),
            "--include", "transformer.h.*.attn.*", "--resolution", "3", "--plot", "contour",
            "-o", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    s = la.load(out)
    train, _ = lm_data
    obj = la.Objective(model, train, include="transformer.h.*.attn.*")
    assert len(obj.names) == 8 and all(".attn." in n for n in obj.names)
    assert s.loss[1, 1] == pytest.approx(obj.loss(), abs=1e-6)
    args[args.index("transformer.h.*.attn.*")] = "nothing.*"
    bad = CliRunner().invoke(app, args)
    assert bad.exit_code != 0 and "no parameter of the model matches" in str(bad.exception)


def test_trajectory_of_the_transformer(gpt2, lm_data):
    model, run = gpt2
    train, _ = lm_data
    plane = la.trajectory.pca(run.checkpoints, method="li2018")
    obj = la.Objective(model, train, batch_size=96)
    path = la.trajectory.project(obj, plane, run.checkpoints)
    assert path.x.shape == (len(run.checkpoints),) and np.isfinite(path.loss).all()
    assert path.loss[-1] == pytest.approx(obj.loss(), abs=1e-5)


def test_bert_classifier_trains_on_tokens():
    train, _ = la.datasets.load("tokens", n_train=256, n_test=64)
    model = la.zoo.build("hf:bert-tiny", dataset=train, seed=0)
    obj = la.Objective(model, train, batch_size=128)
    before = obj.loss()
    la.train(model, train, epochs=3, lr=0.05, batch_size=32, seed=0, progress=False,
             record=None)
    after = la.Objective(model, train, batch_size=128).evaluate()
    assert after["loss"] < before and 0 <= after["accuracy"] <= 1
    g = la.Objective(model, train, batch_size=128).grad()
    assert all(torch.isfinite(t).all() for t in g.values())


def test_la_train_reads_hugging_face_style_dict_items(lm_data):
    """A dataset of {"input_ids", "labels"} items trains exactly like the (X, y) tensors."""
    train, _ = lm_data
    X, Y = train.tensors

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            return {"input_ids": X[i], "labels": Y[i]}

    runs = []
    for data in (Items(), (X[:64], Y[:64])):
        model = la.zoo.build("hf:gpt2-tiny", dataset=train, seed=0)
        runs.append(la.train(model, data, epochs=1, batch_size=16, lr=0.05, seed=0,
                             progress=False, record=None))
    a, b = (la.params.flatten(r.final) for r in runs)
    assert torch.equal(a, b)
