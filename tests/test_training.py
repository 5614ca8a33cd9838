"""training.py: reproducibility, the run folder, recording, stopping, Recorder, Run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossatlas.batteries.training as T
from lossatlas.core.errors import LossAtlasError
from lossatlas.core.params import of


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("LOSSATLAS_QUIET", "1")


def make_data(n: int = 100, d: int = 5, c: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    return torch.utils.data.TensorDataset(X, y % c)


def make_model(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3)]
    return nn.Sequential(*layers)


def test_same_seed_gives_bit_identical_checkpoints(tmp_path):
    data = make_data()
    runs = [
        T.train(make_model(bn=True), data, epochs=3, batch_size=16, out=tmp_path / f"r{i}")
        for i in range(2)
    ]
    assert len(runs[0]) == len(runs[1]) == 4
    for a, b in zip(runs[0].manifest, runs[1].manifest):
        files = [tmp_path / "r0" / a["file"], tmp_path / "r1" / b["file"]]
        assert files[0].read_bytes() == files[1].read_bytes()
        assert a["train_loss"] == b["train_loss"]
    other = T.train(make_model(bn=True), data, epochs=3, batch_size=16, seed=1)
    assert torch.equal(other.states[0]["0.weight"], runs[0].states[0]["0.weight"])
    assert not torch.equal(other.final["0.weight"], runs[0].final["0.weight"])


def test_manifest_and_epoch_zero_is_the_initialization(tmp_path):
    model, data, test = make_model(bn=True), make_data(), make_data(40, seed=1)
    init = of(model)
    init_buffers = {k: v.clone() for k, v in model.named_buffers()}
    run = T.train(model, data, test_data=test, epochs=2, batch_size=32, out=tmp_path / "run")
    doc = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert doc["format"] == "lossatlas.run" and doc["status"] == "finished"
    assert doc["hyperparameters"]["lr"] == 0.1 and doc["seed"] == 0
    assert doc["parameter_names"] == ["0.weight", "0.bias", "1.weight", "1.bias", "4.weight",
                                      "4.bias"]
    assert doc["data"]["train"]["len"] == 100 and doc["data"]["test"]["len"] == 40
    assert "Sequential" in doc["model"]["class"] and doc["torch_version"] == torch.__version__
    entries = doc["checkpoints"]
    assert [e["epoch"] for e in entries] == [0, 1, 2]
    assert [e["step"] for e in entries] == [0, 4, 8]
    assert entries[0]["file"] == "checkpoints/ckpt_00000.pt"
    for e in entries:
        assert {"index", "epoch", "step", "lr", "train_loss", "train_acc", "test_loss",
                "test_acc", "file"} <= set(e)
        assert (tmp_path / "run" / e["file"]).is_file()
    p0 = run.checkpoints[0]
    assert list(p0) == list(init) and all(torch.equal(p0[k], init[k]) for k in init)
    s0 = run.states[0]
    assert all(torch.equal(s0[k], v) for k, v in init_buffers.items())
    assert not torch.equal(run.states[-1]["1.running_mean"], init_buffers["1.running_mean"])
    assert all(torch.equal(run.final[k], v) for k, v in of(model).items())  # trained in place
    assert list(run.train_loss) == [e["train_loss"] for e in entries]
    assert np.all(np.isfinite(run.test_acc))


def test_metrics_are_exact_full_data_means_in_eval_mode():
    model, data = make_model(bn=True), make_data(103)  # 103 = not a multiple of any batch size
    run = T.train(model, data, epochs=1, batch_size=10, eval_batch_size=7)
    X, y = data.tensors
    for i in (0, -1):
        run.load_into(model, i)
        model.eval()
        with torch.no_grad():
            out = model(X)
        assert run.train_loss[i] == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-5)
        assert run.train_acc[i] == pytest.approx(float((out.argmax(1) == y).double().mean()))
    assert model.training is False  # load_into does not touch the mode; we set eval above


def test_record_every_k_steps_and_none():
    data = make_data(100)  # 4 steps per epoch with batch 32 (last batch 4)
    run = T.train(make_model(), data, epochs=3, batch_size=32, record=5)
    assert run.steps.tolist() == [0, 5, 10, 12]
    assert run.epochs.tolist() == [0, 1.25, 2.5, 3]
    run = T.train(make_model(), data, epochs=3, batch_size=32, record=None)
    assert run.steps.tolist() == [0, 12]


def test_schedules_recorded_lrs():
    data = make_data(64)
    run = T.train(make_model(), data, epochs=4, batch_size=32, schedule="step", milestones=[2],
                  gamma=0.5, lr=0.2)
    assert run.lrs.tolist() == pytest.approx([0.2, 0.2, 0.2, 0.1, 0.1])
    run = T.train(make_model(), data, epochs=2, batch_size=32, schedule="cosine", lr=0.2,
                  record=1)
    expected = [0.2] + [0.1 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert run.lrs.tolist() == pytest.approx(expected)


def test_non_finite_loss_stops_and_keeps_checkpoints(tmp_path):
    calls = {"n": 0}

    def flaky(out, y):
        calls["n"] += 1
        loss = F.cross_entropy(out, y)
        # training steps are calls 1..; evaluation also calls it, count only grad-enabled calls
        return loss * math.nan if torch.is_grad_enabled() and calls["n"] > 12 else loss

    with pytest.warns(RuntimeWarning, match="non-finite training loss"):
        run = T.train(make_model(), make_data(), epochs=5, batch_size=32, loss=flaky,
                      out=tmp_path / "r")
    assert run.status == "stopped" and "non-finite training loss" in run.stopped_reason
    assert "lower lr" in run.stopped_reason
    back = T.load_run(tmp_path / "r")
    assert back.stopped_reason == run.stopped_reason and len(back) == len(run) >= 2
    assert all(np.isfinite(back.train_loss))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        run = T.train(make_model(), make_data(), epochs=5, lr=1e6, weight_decay=0)
    assert run.status == "stopped" and len(run) >= 1
    assert all(bool(torch.isfinite(v).all()) for v in run.final.values())


def test_load_run_lazy_sequences(tmp_path):
    model = make_model()
    run = T.train(model, make_data(), epochs=4, batch_size=50, out=tmp_path / "r")
    back = T.load_run(tmp_path / "r")
    assert len(back.checkpoints) == 5 and back.status == "finished"
    assert back.epochs.tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(back.train_loss, run.train_loss)
    sl = back.checkpoints[1:4]
    assert len(sl) == 3 and sl[0].meta["epoch"] == 1 and sl[-1].meta["epoch"] == 3
    assert len(back.checkpoints[::2]) == 3
    pts = list(back.checkpoints)
    assert all(torch.equal(pts[-1][k], back.checkpoints[-1][k]) for k in pts[-1])
    with pytest.raises(IndexError):
        back.checkpoints[5]
    fresh = make_model(seed=3)
    back.load_into(fresh, 2)
    assert all(torch.equal(v, back.checkpoints[2][k]) for k, v in of(fresh).items())
    with pytest.raises(LossAtlasError, match="index"):
        back.load_into(fresh, 9)
    with pytest.raises(LossAtlasError, match="manifest"):
        T.load_run(tmp_path)


def test_recorder_in_a_user_loop(tmp_path):
    model, data = make_model(), make_data()
    X, y = data.tensors
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    rec = T.Recorder(tmp_path / "mine", model, every=2)
    rec.record(model, epoch=0, step=0, lr=0.05, **{"train_loss": 1.5, "grad_norm": 0.0})
    for step in range(1, 7):
        opt.zero_grad()
        loss = F.cross_entropy(model(X), y)
        loss.backward()
        opt.step()
        if rec.due(step, end_of_epoch=True):
            m = T.evaluate(model, data)
            rec.record(model, epoch=step, step=step, lr=0.05, train_loss=m["loss"],
                       train_acc=m["accuracy"], grad_norm=1.0)
    rec.finish()
    back = T.load_run(tmp_path / "mine")
    assert back.steps.tolist() == [0, 2, 4, 6] and back.status == "finished"
    assert back.metric("grad_norm").tolist() == [0, 1, 1, 1]
    assert np.isnan(back.test_loss).all()
    assert all(torch.equal(v, back.final[k]) for k, v in of(model).items())


def test_other_data_forms_train_identically():
    data = make_data()
    X, y = data.tensors

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return len(X)

        def __getitem__(self, i):
            return {"x": X[i], "label": y[i]}

    runs = [T.train(make_model(), d, epochs=2, batch_size=32) for d in (data, (X, y), Dicts())]
    for r in runs[1:]:
        assert all(torch.equal(r.final[k], runs[0].final[k]) for k in r.final)
    sub = torch.utils.data.Subset(data, range(10, 60))
    assert T.as_tensors(sub)[0].shape == (50, 5)


def test_caller_state_is_restored():
    model = make_model()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    det = torch.are_deterministic_algorithms_enabled()
    T.train(model, make_data(), epochs=1)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.are_deterministic_algorithms_enabled() == det


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"epochs": 0}, "epochs"),
        ({"lr": 0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"schedule": "linear"}, "schedule"),
        ({"record": "batch"}, "record"),
        ({"record": 0}, "record"),
        ({"batch_size": 0}, "batch_size"),
        ({"milestones": [5]}, "milestones"),
        ({"loss": "hinge"}, "loss"),
    ],
)
def test_bad_input(kwargs, word):
    with pytest.raises(LossAtlasError, match=word):
        T.train(make_model(), make_data(), **{"epochs": 2, **kwargs})


def test_out_with_a_different_run(tmp_path):
    data = make_data()
    T.train(make_model(), data, epochs=1, out=tmp_path)
    again = T.train(make_model(), data, epochs=1, out=tmp_path)  # the same run: left alone
    assert again.already_done and again.status == "finished"
    with pytest.raises(LossAtlasError, match=r"different run.*hyperparameters\.lr"):
        T.train(make_model(), data, epochs=1, lr=0.2, out=tmp_path)
    with pytest.raises(LossAtlasError, match=r"different run.*init_hash"):
        T.train(make_model(seed=1), data, epochs=1, out=tmp_path)
    run = T.train(make_model(), data, epochs=2, lr=0.2, out=tmp_path, overwrite=True)
    assert len(T.load_run(tmp_path)) == len(run) == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "ckpt_00000.pt", "ckpt_00001.pt", "ckpt_00002.pt"]


def test_interrupted_run_keeps_what_was_recorded(tmp_path):
    calls = {"n": 0}

    def stop_midway(out, y):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 10:  # in epoch 3 of 4-step epochs
                raise KeyboardInterrupt
        return F.cross_entropy(out, y)

    with pytest.raises(KeyboardInterrupt):
        T.train(make_model(), make_data(), epochs=5, batch_size=32, loss=stop_midway,
                out=tmp_path / "r")
    run = T.load_run(tmp_path / "r")
    assert run.status == "interrupted" and run.epochs.tolist() == [0, 1, 2]
    assert not list((tmp_path / "r").rglob("*.tmp"))
    run.load_into(make_model(seed=5), -1)


def test_memory_run_and_loose_argument_types(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "mine.txt").write_text("keep")
    run = T.train(make_model(), make_data(), epochs=np.int64(2), batch_size=np.int64(50),
                  schedule="step", record=np.int64(2), out=tmp_path)
    assert (tmp_path / "checkpoints" / "mine.txt").read_text() == "keep"
    assert run.info["hyperparameters"]["milestones"] == [1]
    mem = T.train(make_model(), make_data(), epochs=1, out=None)
    assert mem.path is None and mem.manifest[0]["file"] is None
    p = mem.checkpoints[0]
    p["0.weight"].zero_()  # a copy: the stored checkpoint is unchanged
    assert not torch.equal(mem.checkpoints[0]["0.weight"], p["0.weight"])


def test_model_that_does_not_fit_the_data(tmp_path):
    with pytest.raises(LossAtlasError, match="cannot be evaluated on train_data"):
        T.train(nn.Linear(7, 3), make_data(), epochs=1, out=tmp_path)


def test_recorded_metrics_agree_with_the_objective():
    import lossatlas as la

    model, data = make_model(bn=True), make_data(103)
    run = T.train(model, data, epochs=2, batch_size=16)
    for i in range(len(run)):
        run.load_into(model, i)  # BN running stats of checkpoint i (the Objective copies them)
        obj = la.Objective(model, data, batch_size=64, bn="keep")
        ev = obj.evaluate(run.checkpoints[i])
        assert ev["loss"] == pytest.approx(run.train_loss[i], rel=1e-5)
        assert ev["accuracy"] == pytest.approx(run.train_acc[i])


def _hand_trained(model, X, y, *, epochs, lr, momentum, weight_decay, batch_size, milestones,
                  gamma, seed, eval_batch_size):
    """An independent plain loop with train's documented recipe: the data order drawn from a
    generator seeded with ``seed``, torch's RNG (dropout) seeded with ``seed`` in a fork, SGD
    with the step schedule; after every epoch the parameters and the exact full-data mean loss
    in eval mode (batches weighted by their size)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    n, kept, losses = len(X), [], []

    def keep():
        model.eval()
        with torch.no_grad():
            parts = [(X[i:i + eval_batch_size], y[i:i + eval_batch_size])
                     for i in range(0, n, eval_batch_size)]
            total = sum(float(F.cross_entropy(model(xb), yb)) * len(xb) for xb, yb in parts)
        losses.append(total / n)
        kept.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        keep()
        for epoch in range(epochs):
            model.train()
            for group in opt.param_groups:
                group["lr"] = lr * gamma ** sum(1 for m in milestones if epoch >= m)
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, batch_size):
                idx = perm[i:i + batch_size]
                opt.zero_grad()
                F.cross_entropy(model(X[idx]), y[idx]).backward()
                opt.step()
            keep()
    return kept, losses


@pytest.mark.parametrize("bn", [False, True], ids=["dropout", "bn-dropout"])
def test_train_is_bit_identical_to_an_independent_loop(bn):
    """The recipe, the data order, the RNG and the recorded metrics: a short run of la.train
    equals a hand-written loop bit for bit (parameters and BN buffers of every checkpoint)."""
    X, y = make_data(103).tensors
    kw = dict(epochs=3, lr=0.2, momentum=0.9, weight_decay=1e-3, batch_size=16,
              milestones=[2], gamma=0.5, seed=5, eval_batch_size=40)
    kept, losses = _hand_trained(make_model(seed=2, bn=bn), X, y, **kw)
    run = T.train(make_model(seed=2, bn=bn), (X, y), schedule="step", **kw)
    assert len(run) == len(kept) == 4
    for i, state in enumerate(kept):
        got = {**run.checkpoints[i], **run.states[i]}
        assert set(got) == set(state)
        assert all(torch.equal(got[k], v) for k, v in state.items()), i
    assert run.train_loss.tolist() == pytest.approx(losses, rel=1e-12, abs=0)
    assert run.lrs.tolist() == [0.2, 0.2, 0.2, 0.1]
