"""Untrusted files run no code: the CIFAR reader's restricted unpickler, run manifests confined
to their folder (no absolute paths, no ``..``, no links out, no FIFOs), and a malicious
checkpoint refused with the same one sentence from a run folder as from a ``.pt`` file."""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import lossatlas as la
from lossatlas.batteries import datasets as D
from lossatlas.batteries.datasets import safe_pickle as RP
from lossatlas.batteries.resolve import load_checkpoint
from lossatlas.core.errors import LossAtlasError
from lossatlas.store.results import read_state_dict
from test_datasets import write_fake_cifar


class _RunsCommand:
    """Pickles to ``os.system(command)``: what an attacker would put in a data file."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# -- CIFAR -----------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_batch_that_would_run_a_command_is_refused(tmp_path, protocol):
    folder = write_fake_cifar(tmp_path, "cifar10")
    marker = tmp_path / "PWNED"
    evil = {b"data": _RunsCommand(f"touch {marker}"), b"labels": [0]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=protocol))
    with pytest.raises(LossAtlasError) as exc:
        D.load("cifar10", root=str(tmp_path))
    text = _one_line(exc)
    assert str(folder / "data_batch_1") in text and "system" in text
    assert not marker.exists()
    # the same file read by plain pickle would have run the command (the test can fail)
    pickle.loads((folder / "data_batch_1").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("payload", [
    {b"data": np.array([1, "a"], dtype=object)},          # object arrays hold any object
    {b"data": eval},                                       # builtins.eval
    {b"data": np.uint8(3)},                                # a numpy scalar: not in the files
])
def test_cifar_unpickler_admits_nothing_else(tmp_path, payload):
    with pytest.raises(LossAtlasError, match=r"^f: .*not read.*re-extract") as exc:
        RP.load(pickle.dumps(payload, protocol=2), "f:", "re-extract")
    _one_line(exc)


def test_cifar_unpickler_refuses_truncated_and_non_dict_files(tmp_path):
    folder = write_fake_cifar(tmp_path, "cifar10")
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LossAtlasError, match=r"test_batch is not a readable pickle") as exc:
        D.load("cifar10", root=str(tmp_path))
    _one_line(exc)
    (folder / "test_batch").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(LossAtlasError, match=r"test_batch holds a list, not the dict"):
        D.load("cifar10", root=str(tmp_path))


def _py2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A pickle in the byte layout of the official files (Python 2 cPickle, protocol 2,
    ``numpy.core.multiarray._reconstruct``, py2 ``str`` as SHORT_BINSTRING / BINSTRING)."""

    def s(b: bytes) -> bytes:  # a Python 2 str
        if len(b) < 256:
            return b"U" + bytes([len(b)]) + b
        return b"T" + struct.pack("<i", len(b)) + b

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    shape = b"(" + b"".join(i(n) for n in data.shape) + b"t"
    dtype = (b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
             + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"(" + i(0)
             + b"t" + s(b"b") + b"\x87R" + b"(" + i(1) + shape + dtype + b"\x89"
             + s(data.tobytes()) + b"tb")
    lab = b"]" + b"(" + b"".join(i(v) for v in labels) + b"e"
    return (b"\x80\x02}" + b"(" + s(b"batch_label") + s(b"testing batch 1 of 1") + s(b"data")
            + array + s(b"labels") + lab + b"u.")


def test_cifar_official_python2_layout_still_loads(tmp_path):
    folder = write_fake_cifar(tmp_path, "cifar10")
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(20, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, 20)]
    blob = _py2_pickle(data, labels)
    assert b"numpy.core.multiarray" in blob
    back = pickle.loads(blob, encoding="bytes")  # what plain pickle makes of it
    assert np.array_equal(back[b"data"], data) and back[b"labels"] == labels
    ours = RP.load(blob, "f", "fix")
    assert np.array_equal(ours[b"data"], data) and ours[b"labels"] == labels
    assert ours[b"data"].dtype == np.uint8
    (folder / "test_batch").write_bytes(blob)
    _, test = D.load("cifar10", root=str(tmp_path))
    assert test.y.tolist() == labels


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_arrays_of_every_protocol_load(protocol):
    d = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [1, 2, 3],
         b"filenames": [b"a.png"], "batch_label": "x", b"f": np.asfortranarray(np.eye(2))}
    back = RP.load(pickle.dumps(d, protocol=protocol), "f", "fix")
    assert back.keys() == d.keys()
    for k, v in d.items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(back[k], v) and back[k].dtype == v.dtype
        else:
            assert back[k] == v


# -- run manifests ---------------------------------------------------------------------------
@pytest.fixture
def run_folder(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    X, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    la.train(model, (X, y), epochs=2, lr=0.1, batch_size=8, out=tmp_path / "run",
             progress=False)
    return tmp_path / "run", model


def _set_entry(run: Path, value) -> None:
    doc = json.loads((run / "manifest.json").read_text())
    doc["checkpoints"][0]["file"] = value
    (run / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("entry", ["/etc/passwd", "../outside.pt", "checkpoints/../../x.pt",
                                   "C:\\\\x.pt", None])
def test_manifest_entries_that_leave_the_folder_are_refused(run_folder, entry):
    run, model = run_folder
    (run.parent / "outside.pt").write_bytes((run / "checkpoints" / "ckpt_00000.pt").read_bytes())
    _set_entry(run, entry)
    with pytest.raises(LossAtlasError, match=r"checkpoint 0 of the run .*manifest entry") as exc:
        la.load_run(run)
    _one_line(exc)
    with pytest.raises(LossAtlasError, match=r"checkpoint 0 of the run"):
        load_checkpoint(model, run, 0)


def test_manifest_link_out_of_the_folder_is_refused(run_folder):
    run, _ = run_folder
    outside = run.parent / "secret.pt"
    torch.save({"weight": torch.zeros(3, 4), "bias": torch.zeros(3)}, outside)
    target = run / "checkpoints" / "ckpt_00000.pt"
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(LossAtlasError, match=r"a link that leads outside the run folder"):
        la.load_run(run)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_manifest_entry_naming_a_fifo_is_refused_without_hanging(run_folder):
    run, model = run_folder
    fifo = run / "checkpoints" / "ckpt_00001.pt"
    fifo.unlink()
    os.mkfifo(fifo)
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("reading the FIFO hung"))
    signal.alarm(20)
    try:
        r = la.load_run(run)
        with pytest.raises(LossAtlasError, match=r"is a FIFO, not a regular file") as exc:
            r.checkpoints[1]
        _one_line(exc)
        with pytest.raises(LossAtlasError, match=r"is a FIFO, not a regular file"):
            load_checkpoint(model, run, 1)
        with pytest.raises(LossAtlasError, match=r"is a FIFO, not a regular file"):
            read_state_dict(fifo, "--checkpoint")
        with pytest.raises(LossAtlasError, match=r"is a FIFO"):
            la.trajectory.pca(r.checkpoints, method="li2018")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_malicious_checkpoint_same_sentence_from_run_folder_and_pt(run_folder, tmp_path):
    run, model = run_folder
    marker = tmp_path / "PWNED"
    evil = {"weight": torch.zeros(3, 4), "bias": _RunsCommand(f"touch {marker}")}
    pt = tmp_path / "evil.pt"
    torch.save(evil, pt)
    torch.save(evil, run / "checkpoints" / "ckpt_00001.pt")
    with pytest.raises(LossAtlasError) as from_pt:
        load_checkpoint(model, pt)
    with pytest.raises(LossAtlasError) as from_run:
        load_checkpoint(model, run, 1)
    with pytest.raises(LossAtlasError) as from_api:
        la.load_run(run).checkpoints[1]
    texts = [_one_line(e) for e in (from_pt, from_run, from_api)]
    reason = texts[0].split("cannot be read", 1)[1]
    assert "asks for posix.system" in reason or "asks for os.system" in reason
    assert all(t.endswith(reason) and "cannot be read" in t for t in texts)
    assert texts[0].startswith(f"--checkpoint {str(pt)!r}")
    assert texts[1].startswith(f"checkpoint 1 of the run {str(run)!r}:")
    assert not marker.exists()
