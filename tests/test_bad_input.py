"""Bad input gets one sentence, never a traceback (issue 11, "Clear errors instead of
tracebacks").

Every case below is a command line (run in-process through ``lossatlas.cli.main``) or a Python
call, with a phrase its message must contain. For each case the test checks:

- command line: exit code 2, exactly one line on stderr, starting ``error:``;
- Python: a :class:`LossAtlasError` whose message is one line;
- either way: one sentence (no ". Capital" inside), no ``Traceback``, the phrase, and every
  file of the working folder byte-identical afterwards, with no file added.

Ctrl-C (SIGINT to a real process, with and without ``--workers``) must print one line with
what was kept and the exact command that resumes, and exit with code 130.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import lossatlas as la
from lossatlas.core.errors import LossAtlasError

DATA = ["--data", "gaussians", "--data-arg", "train_size=64", "--width", "8"]
CUDA = torch.cuda.is_available()


# -- the working folder ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Files the cases point at: a result file, empty / truncated / foreign files, a
    checkpoint, a folder, a 1 x 1 surface and sweep files with unknown keys."""
    root = tmp_path_factory.mktemp("bad-input")
    net, obj, d = _tiny()
    la.curve(obj, d, points=5, path=root / "curve.h5", progress=False)
    la.surface(obj, d, la.directions.gaussian(net, seed=1), resolution=1, xspan=(0, 0),
               yspan=(0, 0), path=root / "point.h5", progress=False)
    (root / "zero.h5").write_bytes(b"")
    (root / "truncated.h5").write_bytes((root / "curve.h5").read_bytes()[:2000])
    (root / "notes.h5").write_bytes(b"loss landscape notes, not HDF5\n")
    model = la.zoo.build("mlp", dataset=la.datasets.load("gaussians", train_size=64)[0],
                         width=8, seed=0)
    torch.save(model.state_dict(), root / "weights.pt")
    (root / "folder").mkdir()
    (root / "folder" / "keep.txt").write_text("untouched\n")
    base = ('name = "t"\nseeds = [0, 1]\n[data]\nname = "gaussians"\ntrain_size = 64\n'
            '[model]\nname = "mlp"\n[load]\nparam = "width"\nvalues = [4, 8]\n'
            '[temperature]\nparam = "lr"\nvalues = [0.1, 0.2]\n')
    (root / "ok.toml").write_text(base + "[train]\nepochs = 1\n")
    (root / "data_key.toml").write_text(base.replace('train_size = 64', 'train_size = 64\nfoo = 1'))
    (root / "model_key.toml").write_text(base.replace('name = "mlp"', 'name = "mlp"\nwidht = 8'))
    # from trust-safety: NaN weights, a checkpoint that asks for code, a manifest entry that
    # leaves its run folder, a half-computed curve, a CIFAR batch that would run a command
    torch.save({k: torch.full_like(v, math.nan) for k, v in model.state_dict().items()},
               root / "nan.pt")
    torch.save({"weight": _RunsCommand("true")}, root / "evil.pt")
    la.train(model, la.datasets.load("gaussians", train_size=64)[0], epochs=1, out=root / "run",
             progress=False)
    doc = json.loads((root / "run" / "manifest.json").read_text())
    doc["checkpoints"][0]["file"] = "../weights.pt"
    (root / "run" / "manifest.json").write_text(json.dumps(doc))

    def stop(done, total):
        raise InterruptedError

    with contextlib.suppress(InterruptedError):
        la.curve(obj, d, points=11, chunk_size=5, path=root / "half.h5", callback=stop,
                 progress=False)
    from test_datasets import write_fake_cifar

    cifar = write_fake_cifar(root / "cifar", "cifar10", n_per_batch=4)
    (cifar / "data_batch_1").write_bytes(pickle.dumps({b"data": _RunsCommand("true")}))
    (root / "train_key.toml").write_text(base + "[train]\nepochs = 1\nlrr = 0.1\n")
    (root / "phases_key.toml").write_text(base + "[phases]\nckaa = 0.9\n")
    (root / "connect_key.toml").write_text(base + "[measure.connect]\nepoch = 2\n")
    (root / "axis_key.toml").write_text(base.replace('param = "lr"', 'param = "train.lrr"'))
    return root


class _RunsCommand:
    """Pickles to ``os.system(command)``: what an attacker would put in a file."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _tiny():
    torch.manual_seed(0)
    X, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    obj = la.Objective(net, (X, y), batch_size=40)
    return net, obj, la.directions.gaussian(net, seed=0)


@contextlib.contextmanager
def being_written(name: str):
    """Hold the lock HDF5 takes on a file open for writing (as a running surface does)."""
    with open(name, "rb") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


@contextlib.contextmanager
def writer_holds(name: str):
    """Hold lossatlas' writer lock on a file or folder (``NAME.lock`` with this pid), as a
    second process writing it would; the lock file goes away with the lock."""
    from lossatlas.store.locks import lock_path, writer_lock

    with writer_lock(lock_path(name), name):
        yield


# -- the cases ------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    phrase: str
    argv: list[str] | None = None               # a command line ...
    call: Callable[[], object] | None = None    # ... or a Python call
    hold: str | None = None                     # a file held "being written" meanwhile
    lock: str | None = None                     # a file / folder whose writer lock is held
    skip: str | None = None                     # reason to skip on this machine
    marks: list = field(default_factory=list)


def _x(n=20, width=5):
    return torch.randn(n, width)


def _net():
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _resume_other_batch():
    net, obj, d = _tiny()
    obj2 = la.Objective(net, (obj.batches[0].inputs, obj.batches[0].targets), batch_size=7)
    la.curve(obj2, d, points=5, path="curve.h5", progress=False)


def _curve_to(path, points=5):
    def call():
        _, obj, d = _tiny()
        la.curve(obj, d, points=points, path=path, progress=False)
    return call


def _beyond_free_disk():
    from unittest import mock

    with mock.patch("lossatlas.core.resources.free_disk", return_value=1000):
        _curve_to("big.h5", points=1000)()


def _surface_res(n):
    def call():
        net, obj, d = _tiny()
        la.surface(obj, d, la.directions.gaussian(net, seed=1), resolution=n, progress=False)
    return call


CASES = [
    # result files given to plot / shapes / la.load
    Case("plot-folder", "is a folder", ["plot", "folder"]),
    Case("plot-zero-byte", "is empty (0 bytes", ["plot", "zero.h5"]),
    Case("plot-pt", "is a torch checkpoint", ["plot", "weights.pt"]),
    Case("plot-truncated", "damaged or truncated", ["plot", "truncated.h5"]),
    Case("plot-foreign", "is not an HDF5 file", ["plot", "notes.h5"]),
    Case("plot-being-written", "being written by another process", ["plot", "curve.h5"],
         hold="curve.h5"),
    Case("plot-1x1-surface", "at least 2 points per axis", ["plot", "point.h5"]),
    Case("shapes-folder", "is a folder", ["shapes", "folder"]),
    Case("shapes-zero-byte", "is empty (0 bytes", ["shapes", "zero.h5"]),
    Case("shapes-pt", "is a torch checkpoint", ["shapes", "weights.pt"]),
    Case("shapes-truncated", "damaged or truncated", ["shapes", "truncated.h5"]),
    Case("shapes-being-written", "being written by another process", ["shapes", "curve.h5"],
         hold="curve.h5"),
    Case("load-folder", "is a folder", call=lambda: la.load("folder")),
    Case("load-zero-byte", "is empty (0 bytes", call=lambda: la.load("zero.h5")),
    Case("load-pt", "is a torch checkpoint", call=lambda: la.load("weights.pt")),
    Case("load-truncated", "damaged or truncated", call=lambda: la.load("truncated.h5")),
    Case("load-being-written", "being written by another process",
         call=lambda: la.load("curve.h5"), hold="curve.h5"),
    # --out
    Case("curve-out-zero-byte", "--out 'zero.h5' is empty",
         ["curve", *DATA, "--points", "5", "--out", "zero.h5"]),
    Case("curve-out-truncated", "--out 'truncated.h5' is a damaged or truncated",
         ["curve", *DATA, "--points", "5", "--out", "truncated.h5"]),
    Case("surface-out-zero-byte", "--out 'zero.h5' is empty",
         ["surface", *DATA, "--resolution", "3", "--out", "zero.h5"]),
    Case("surface-out-being-written", "being written by another process",
         ["surface", *DATA, "--resolution", "3", "--out", "curve.h5"], hold="curve.h5"),
    Case("curve-out-folder", "--out 'folder' is a folder",
         ["curve", *DATA, "--points", "5", "--out", "folder"]),
    Case("surface-out-folder", "--out 'folder' is a folder",
         ["surface", *DATA, "--resolution", "3", "--out", "folder"]),
    Case("curve-out-under-file", "which is a file, not a folder",
         ["curve", *DATA, "--points", "5", "--out", "weights.pt/c.h5"]),
    Case("surface-out-under-file", "which is a file, not a folder",
         ["surface", *DATA, "--resolution", "3", "--out", "curve.h5/s.h5"]),
    Case("interpolate-out-folder", "--out 'folder' is a folder",
         ["interpolate", *DATA, "-c", "weights.pt", "--to", "weights.pt", "--out", "folder"]),
    Case("train-out-file", "--out 'weights.pt' is a file; pass a folder path",
         ["train", *DATA, "--epochs", "1", "--out", "weights.pt"]),
    Case("train-out-under-file", "which is a file, not a folder",
         ["train", *DATA, "--epochs", "1", "--out", "weights.pt/run"]),
    Case("sweep-out-file", "--out 'weights.pt' is a file",
         ["sweep", "ok.toml", "--out", "weights.pt"]),
    Case("hessian-out-folder", "--out 'folder' is a folder", ["hessian", *DATA, "--out", "folder"]),
    Case("mine-out-folder", "--out 'folder' is a folder",
         ["mine", "w-peak", *DATA, "--epochs", "1", "--out", "folder"]),
    Case("connect-out-folder", "--out 'folder' is a folder",
         ["connect", "weights.pt", "weights.pt", *DATA, "--out", "folder"]),
    Case("curves-out-under-file", "which is a file, not a folder",
         ["curves", "-D", "gaussian", *DATA, "--out", "weights.pt/c.png"]),
    Case("python-save-folder", "path 'folder' is a folder",
         call=lambda: la.curve(_tiny()[1], _tiny()[2], points=3, progress=False).save("folder")),
    Case("python-path-folder", "path 'folder' is a folder", call=_curve_to("folder")),
    Case("python-path-under-file", "which is a file", call=_curve_to("weights.pt/c.h5")),
    Case("python-path-zero-byte", "is empty (0 bytes", call=_curve_to("zero.h5")),
    # --checkpoint
    Case("checkpoint-zero-byte", "--checkpoint 'zero.h5' is empty",
         ["curve", *DATA, "-c", "zero.h5", "--points", "3", "--out", "c.h5"]),
    Case("checkpoint-result-file", "is an HDF5 result file, not a checkpoint",
         ["curve", *DATA, "-c", "curve.h5", "--points", "3", "--out", "c.h5"]),
    Case("checkpoint-text-file", "cannot be read as a torch state dict (Weights only load failed)",
         ["curve", *DATA, "-c", "notes.h5", "--points", "3", "--out", "c.h5"]),
    Case("checkpoint-other-width", "1.weight is (8, 2) in the file, (16, 2) here",
         ["curve", *DATA[:-1], "16", "-c", "weights.pt", "--points", "3", "--out", "c.h5"]),
    # devices
    Case("device-tpu", "--device 'tpu' is not a torch device",
         ["curve", *DATA, "--points", "5", "--device", "tpu", "--out", "c.h5"]),
    Case("device-cuda", "--device 'cuda' needs a CUDA GPU",
         ["curve", *DATA, "--points", "5", "--device", "cuda", "--out", "c.h5"],
         skip="CUDA is available" if CUDA else None),
    Case("device-cuda-index", "cuda:99",
         ["surface", *DATA, "--resolution", "3", "--device", "cuda:99", "--out", "s.h5"]),
    Case("train-device-tpu", "--device 'tpu' is not a torch device",
         ["train", *DATA, "--epochs", "1", "--device", "tpu", "--out", "run"]),
    Case("train-device-cuda", "needs a CUDA GPU",
         ["train", *DATA, "--epochs", "1", "--device", "cuda", "--out", "run"],
         skip="CUDA is available" if CUDA else None),
    Case("python-device-tpu", "device 'tpu' is not a torch device",
         call=lambda: la.Objective(_net(), (_x(), torch.randint(0, 3, (20,))), device="tpu")),
    # sizes
    Case("surface-resolution-100000", "of memory",
         ["surface", *DATA, "--resolution", "100000", "--out", "s.h5"]),
    Case("surface-xres-yres-huge", "--xres 200000 --yres 100000 asks for",
         ["surface", *DATA, "--xres", "200000", "--yres", "100000", "--out", "s.h5"]),
    Case("curve-points-2e9", "--points 2000000000 asks for 2,000,000,000 points",
         ["curve", *DATA, "--points", "2000000000", "--out", "c.h5"]),
    Case("curve-points-0", "--points 0 asks for no point",
         ["curve", *DATA, "--points", "0", "--out", "c.h5"]),
    Case("surface-resolution-1", "pass --resolution 2 or more",
         ["surface", *DATA, "--resolution", "1", "--out", "s.h5"]),
    Case("surface-xres-1", "pass --xres 2 or more",
         ["surface", *DATA, "--xres", "1", "--out", "s.h5"]),
    Case("python-surface-resolution-100000", "resolution=100000 asks for",
         call=_surface_res(100000)),
    Case("python-curve-points-2e9", "points=2000000000 asks for",
         call=_curve_to("c.h5", points=2_000_000_000)),
    Case("file-beyond-free-disk", "points=1000 needs a file of about 45.9 KiB but the disk "
         "under 'big.h5' has 1000 B free", call=_beyond_free_disk),
    # resuming with other arguments
    Case("resume-other-batch-size", "the batch size (--batch-size / batch_size=: file 40, now 7",
         call=_resume_other_batch),
    Case("resume-other-points", "differing: the grid",
         call=_curve_to("curve.h5", points=7)),
    # sweep files
    Case("sweep-unknown-train-key", "[train] has unknown keys ['lrr']",
         ["sweep", "train_key.toml", "--out", "sw"]),
    Case("sweep-unknown-phases-key", "[phases] has unknown keys ['ckaa']",
         ["sweep", "phases_key.toml", "--out", "sw"]),
    Case("sweep-unknown-connect-key", "[measure.connect] has unknown keys ['epoch']",
         ["sweep", "connect_key.toml", "--out", "sw"]),
    Case("sweep-axis-unknown-train-key", "param='train.lrr' sets no known [train] key",
         ["sweep", "axis_key.toml", "--out", "sw"]),
    # landed from trust-files (issue 11, part B): one writer per file / folder, the split
    Case("second-writer-surface", f"is being written by process {os.getpid()}",
         ["surface", *DATA, "--resolution", "3", "--out", "s.h5"], lock="s.h5"),
    Case("second-writer-python", f"is being written by process {os.getpid()}",
         call=_curve_to("c.h5"), lock="c.h5"),
    Case("second-writer-train", f"is being written by process {os.getpid()}",
         ["train", *DATA, "--epochs", "1", "--out", "run"], lock="run"),
    Case("second-writer-sweep", f"is being written by process {os.getpid()}",
         ["sweep", "ok.toml", "--out", "sw"], lock="sw"),
    Case("resume-other-split", "on the train split, not the test split",
         ["curve", *DATA, "--split", "test", "--points", "5", "--out", "curve.h5"]),
    # landed from trust-safety (issue 11, part A): untrusted files, silent wrong results
    Case("checkpoint-asks-for-code", "which loading with weights_only=True refuses",
         ["curve", *DATA, "-c", "evil.pt", "--points", "3", "--out", "c.h5"]),
    Case("run-manifest-leaves-folder", "manifest entry",
         ["curve", *DATA, "-c", "run", "--points", "3", "--out", "c.h5"]),
    Case("cifar-batch-runs-a-command", "data_batch_1",
         ["curve", "--data", "cifar10", "--data-arg", "root=cifar", "--points", "3",
          "--out", "c.h5"]),
    Case("nan-direction-cli", "holds NaN or inf",
         ["curve", *DATA, "-D", "checkpoint:nan.pt", "--points", "3", "--out", "c.h5"]),
    Case("nan-direction-python", "holds NaN or inf",
         call=lambda: la.curve(_tiny()[1], {k: v * math.nan for k, v in _tiny()[2].items()},
                               points=3, progress=False)),
    Case("shapes-half-computed", "half-computed (5 of 11 points)", ["shapes", "half.h5"]),
    Case("plot-half-computed", "half-computed (5 of 11 points)", ["plot", "half.h5"]),
    Case("loader-drop-last", "drop_last=True",
         call=lambda: la.Objective(_net(), torch.utils.data.DataLoader(
             torch.utils.data.TensorDataset(_x(23), torch.randint(0, 3, (23,))), batch_size=5,
             shuffle=True, drop_last=True))),
    Case("sweep-unknown-data-key", "[data] has unknown keys ['foo']",
         ["sweep", "data_key.toml", "--out", "sw"]),
    Case("sweep-unknown-model-key", "[model] has unknown keys ['widht']",
         ["sweep", "model_key.toml", "--out", "sw"]),
    # data in Python
    Case("labels-out-of-range", "the label 7 but the model (Sequential) outputs 3 classes",
         call=lambda: la.Objective(_net(), (_x(), torch.full((20,), 7)))),
    Case("labels-negative", "class labels count from 0",
         call=lambda: la.Objective(_net(), (_x(), torch.full((20,), -3)))),
    Case("labels-float", "needs integer class labels",
         call=lambda: la.Objective(_net(), (_x(), torch.rand(20)))),
    Case("data-length-mismatch", "20 inputs but 19 targets",
         call=lambda: la.Objective(_net(), (_x(), torch.randint(0, 3, (19,))))),
    Case("data-empty", "data is empty",
         call=lambda: la.Objective(_net(), (_x(0), torch.randint(0, 3, (0,))))),
    Case("input-width", "the model (Sequential) cannot run on the data (inputs (20, 7)",
         call=lambda: la.Objective(_net(), (_x(20, 7), torch.randint(0, 3, (20,))))),
    Case("train-labels-out-of-range", "the label 7 but the model",
         call=lambda: la.train(_net(), (_x(), torch.full((20,), 7)), epochs=1,
                               progress=False)),
    Case("train-labels-float", "needs integer class labels",
         call=lambda: la.train(_net(), (_x(), torch.rand(20)), epochs=1, progress=False)),
    Case("train-length-mismatch", "20 inputs but 19 targets",
         call=lambda: la.train(_net(), (_x(), torch.randint(0, 3, (19,))), epochs=1,
                               progress=False)),
    Case("train-input-width", "cannot be evaluated on train_data",
         call=lambda: la.train(_net(), (_x(20, 7), torch.randint(0, 3, (20,))), epochs=1,
                               progress=False)),
    Case("train-device-tpu-python", "device 'tpu' is not a torch device",
         call=lambda: la.train(_net(), (_x(), torch.randint(0, 3, (20,))), epochs=1,
                               device="tpu", progress=False)),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file()
            else "dir" for p in sorted(root.rglob("*"))}


def _one_sentence(text: str) -> None:
    assert "\n" not in text.strip(), text
    assert "Traceback" not in text, text
    assert not re.search(r"[.!?] +[A-Z]", text), f"more than one sentence: {text}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_one_sentence(case: Case, folder, monkeypatch, capsys):
    if case.skip:
        pytest.skip(case.skip)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("LOSSATLAS_QUIET", "1")
    before = _snapshot(folder)
    with contextlib.ExitStack() as stack:
        if case.hold:
            stack.enter_context(being_written(case.hold))
        if case.lock:
            stack.enter_context(writer_holds(case.lock))
        if case.argv is not None:
            from lossatlas.cli import main

            monkeypatch.setattr(sys, "argv", ["lossatlas", *case.argv])
            capsys.readouterr()
            with pytest.raises(SystemExit) as exit_info:
                main()
            err = capsys.readouterr().err
            assert exit_info.value.code == 2, err
            lines = [line for line in err.splitlines() if line.strip()]
            assert len(lines) == 1, err
            assert lines[0].startswith("error: "), err
            message = lines[0]
        else:
            with pytest.raises(LossAtlasError) as info:
                case.call()
            message = str(info.value)
    _one_sentence(message)
    assert case.phrase in message, message
    assert _snapshot(folder) == before, "the case changed or added files"


def test_table_is_long_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(200, 200), (50_000,)], ids=["surface", "curve"])
def test_grid_estimates_cover_the_traced_memory_and_the_file(tmp_path, shape):
    """The figures of the memory / disk refusals: resources.grid_bytes against the peak that
    tracemalloc sees (numpy and Python allocations) while the grid is computed into a file,
    and against the file's size."""
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 2)  # the smallest model: the grid's own arrays dominate
    obj = la.Objective(net, (torch.randn(8, 2), torch.randint(0, 2, (8,))))
    d, d2 = la.directions.gaussian(net, seed=0), la.directions.gaussian(net, seed=1)

    def run(n, path):
        if len(shape) == 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # far from orthogonal: irrelevant here
                la.surface(obj, d, d2, resolution=n, path=path, chunk_size=4000, progress=False)
        else:
            la.curve(obj, d, points=n, path=path, chunk_size=4000, progress=False)

    run(3, tmp_path / "warm.h5")  # one-time costs (imports, caches) are not the grid's
    path = tmp_path / "g.h5"
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run(shape[0], path)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    memory, file = la.resources.grid_bytes(shape)
    assert 0.9 * peak <= memory <= 2 * peak, (memory, peak)
    size = path.stat().st_size
    assert 0.9 * size <= file <= 1.5 * size, (file, size)


# -- Ctrl-C ---------------------------------------------------------------------------------
def _interrupt(tmp_path: Path, argv: list[str], out: str, wait: float) -> tuple[int, str]:
    """Run ``lossatlas ARGV`` in a process group, send SIGINT once ``out`` has been written
    and ``wait`` seconds more have passed, and return its exit code and stderr."""
    env = dict(os.environ, LOSSATLAS_QUIET="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(la.__file__).parents[1]),
                                           os.environ.get("PYTHONPATH", "")]))
    code = "import sys; from lossatlas.cli import main; sys.argv[0] = 'lossatlas'; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, *argv], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / out).exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the command wrote nothing in 120 s"
            time.sleep(0.1)
        time.sleep(wait)
        assert proc.poll() is None, proc.communicate()[1].decode()
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err.decode()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_prints_what_was_kept_and_the_command(tmp_path, workers):
    n = 201 if workers == 1 else 601  # two idle workers finish 201² points before the signal
    argv = ["surface", *DATA, "--resolution", str(n), "--out", "s.h5", "--plot", "contour",
            "--workers", str(workers)]
    code, err = _interrupt(tmp_path, argv, "s.h5", wait=1.0 if workers == 1 else 3.0)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 130, err
    assert len(lines) == 1 and "Traceback" not in err, err
    match = re.fullmatch(rf"interrupted: (\d+) of {n * n} points are kept in s\.h5; resume "
                         r"with: (.*)", lines[0])
    assert match, lines[0]
    assert int(match.group(1)) < n * n, "the signal came after the grid was done"
    assert match.group(2) == "lossatlas " + " ".join(argv)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert int(np.sum(f["done"][()])) == int(match.group(1))


@pytest.mark.slow
def test_ctrl_c_during_training_says_the_run_resumes(tmp_path):
    argv = ["train", "--data", "digits", "--data-arg", "train_size=200", "--width", "8",
            "--epochs", "500", "--out", "run", "--no-figure"]
    code, err = _interrupt(tmp_path, argv, "run/checkpoints/ckpt_00001.pt", wait=0.5)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 130 and len(lines) == 1 and "Traceback" not in err, err
    match = re.fullmatch(r"interrupted: (\d+) checkpoints? (?:is|are) kept in run; "
                         r"resume with: (.*)", lines[0])
    assert match and match.group(2) == "lossatlas " + " ".join(argv), lines[0]
    assert len(list((tmp_path / "run" / "checkpoints").glob("ckpt_*.pt"))) == int(match.group(1))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_lost_in_a_garbage_collector_callback_stops_the_next_loop_step():
    """Python prints and ignores a KeyboardInterrupt raised inside a weakref callback; the
    command line's handler remembers it, so the next step of a progress loop raises it (the
    surface does not finish and exit 0 as if nothing happened)."""
    import gc
    import signal
    import weakref

    from lossatlas.core import progress

    old = signal.getsignal(signal.SIGINT)
    try:
        progress.catch_interrupts()

        class Holder:
            pass

        def lost(_):
            signal.raise_signal(signal.SIGINT)  # the handler raises here; Python ignores it

        h = Holder()
        ref = weakref.ref(h, lost)
        del h
        gc.collect()
        assert ref() is None
        steps = []
        with pytest.raises(KeyboardInterrupt):
            for i in progress.track(range(5), disable=True):
                steps.append(i)
        assert steps == []
        assert list(progress.track(range(3), disable=True)) == [0, 1, 2]  # delivered once
    finally:
        signal.signal(signal.SIGINT, old)


def test_ctrl_c_while_the_command_starts_is_one_line_not_a_traceback():
    """A Ctrl-C while ``lossatlas`` imports torch (before its own handler is in place) prints
    one line and exits by SIGINT (code 130 in a shell); a library user's import is untouched."""
    import subprocess
    import sys

    src = str(Path(la.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src}
    as_command = ("import sys; sys.argv[0] = '/venv/bin/lossatlas'; import lossatlas; "
                  "raise KeyboardInterrupt")
    r = subprocess.run([sys.executable, "-c", as_command], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode in (-signal.SIGINT, 130)
    assert r.stderr == "interrupted while lossatlas was starting; nothing was done\n"
    r = subprocess.run([sys.executable, "-c", "import lossatlas; raise KeyboardInterrupt"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" in r.stderr  # a library user's Ctrl-C is Python's own
