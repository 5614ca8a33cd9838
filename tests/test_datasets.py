"""Datasets: shapes for every built-in, standardization, exact label noise, subsets, the CIFAR
reader on a tiny fake in the official layout, the registry and clear errors."""

from __future__ import annotations

import pickle
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import lossatlas.batteries.datasets as D
from lossatlas.batteries.datasets import catalog
from lossatlas.core.errors import LossAtlasError

# name, options, input shape, X dtype, classes, train size, test size
BUILTINS = [
    ("digits", {}, (64,), torch.float32, 10, 1437, 360),
    ("digits", {"image": True}, (1, 8, 8), torch.float32, 10, 1437, 360),
    ("mnist1d", {}, (40,), torch.float32, 10, 4000, 1000),
    ("mnist1d", {"channels": True}, (1, 40), torch.float32, 10, 4000, 1000),
    ("gaussians", {}, (2,), torch.float32, 4, 1000, 1000),
    ("gaussians", {"num_classes": 3, "dim": 5, "n_train": 30}, (5,), torch.float32, 3, 30, 1000),
    ("spirals", {"arms": 3}, (2,), torch.float32, 3, 1000, 1000),
    ("teacher", {}, (20,), torch.float32, 2, 2000, 1000),
    ("tokens", {}, (12,), torch.int64, 4, 2000, 1000),
]


def write_fake_cifar(parent: Path, kind: str, n_per_batch: int = 20, seed: int = 0) -> Path:
    """Write a tiny CIFAR-10 or CIFAR-100 in the official python-pickle layout under ``parent``."""
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        folder = parent / "cifar-10-batches-py"
        files = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
        meta = ("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    else:
        folder = parent / "cifar-100-python"
        files = ["train", "test"]
        meta = ("meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                         b"coarse_label_names": [f"k{i}".encode() for i in range(20)]})
    folder.mkdir(parents=True)
    for f in files:
        n = n_per_batch * (5 if kind == "cifar100" and f == "train" else 1)
        d = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}
        if kind == "cifar10":
            d[b"labels"] = [int(v) for v in rng.integers(0, 10, n)]
        else:
            d[b"fine_labels"] = [int(v) for v in rng.integers(0, 100, n)]
            d[b"coarse_labels"] = [int(v) for v in rng.integers(0, 20, n)]
        with open(folder / f, "wb") as fh:
            pickle.dump(d, fh)
    with open(folder / meta[0], "wb") as fh:
        pickle.dump(meta[1], fh)
    return folder


def _raw_cifar(folder: Path, files: list[str], key: bytes):
    parts = [pickle.load(open(folder / f, "rb")) for f in files]  # noqa: SIM115
    X = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)
    return X, np.concatenate([p[key] for p in parts])


@pytest.mark.parametrize(("name", "kw", "shape", "dtype", "C", "n_train", "n_test"), BUILTINS)
def test_builtin_shapes_dtypes_classes(name, kw, shape, dtype, C, n_train, n_test):
    train, test = D.load(name, **kw)
    for ds, n in ((train, n_train), (test, n_test)):
        assert isinstance(ds, D.ArrayDataset) and isinstance(ds, torch.utils.data.Dataset)
        assert len(ds) == n and ds.input_shape == shape and ds.num_classes == C
        X, y = ds.tensors
        assert X.dtype == dtype and y.dtype == torch.int64 and X.shape == (n, *shape)
        assert int(y.min()) >= 0 and int(y.max()) < C
        x0, y0 = ds[3]
        assert torch.equal(x0, X[3]) and int(y0) == int(y[3])
        assert ds.name == name
    assert len(set(train.y.tolist())) == C  # every class is present
    assert train.info["seed"] == 0 and train.info["label_noise"] == 0.0
    if dtype == torch.int64:
        assert train.vocab_size == 16 and int(train.X.max()) < 16
    else:
        assert train.vocab_size is None and torch.isfinite(train.X).all()


def test_digits_standardized_with_train_statistics_and_fixed_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=360, stratify=y, random_state=0)
    mean, std = Xtr.mean(0), Xtr.std(0)
    std[std == 0] = 1.0  # constant pixels stay at 0 rather than dividing by zero
    for seed in (0, 7):  # the split does not follow the user's seed
        train, test = D.load("digits", seed=seed)
        np.testing.assert_allclose(train.X.numpy(), (Xtr - mean) / std, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(test.X.numpy(), (Xte - mean) / std, rtol=1e-5, atol=1e-6)
        assert train.y.tolist() == ytr.tolist() and test.y.tolist() == yte.tolist()
    Z = train.X.numpy()
    varying = Xtr.std(0) > 0
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(Z.std(0)[varying], 1, atol=1e-4)
    assert (~varying).any() and np.all(Z[:, ~varying] == 0)
    img, _ = D.load("digits", image=True)
    assert torch.equal(img.X.reshape(len(img), -1), train.X)


def test_mnist1d_builds_offline_writes_nothing_and_keeps_global_rngs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.random.seed(123)
    random.seed(123)
    before = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    train, test = D.load("mnist1d", num_samples=200)  # small: a fresh build, not the cache
    assert (np.random.random(), random.random()) == before
    assert list(tmp_path.iterdir()) == []
    assert (len(train), len(test)) == (160, 40) and train.info["num_samples"] == 200
    again, _ = D.load("mnist1d", num_samples=200)
    assert torch.equal(again.X, train.X) and torch.equal(again.y, train.y)


def test_tokens_label_is_the_majority_bucket():
    train, _ = D.load("tokens", vocab_size=10, num_classes=3, seq_len=7, n_train=50)
    for x, y in zip(train.X.tolist(), train.y.tolist()):
        counts = Counter(v * 3 // 10 for v in x)
        best = max(counts.values())
        assert y == min(b for b, c in counts.items() if c == best)


def test_synthetic_data_fixed_but_data_seed_changes_it():
    a, _ = D.load("spirals", seed=0)
    b, _ = D.load("spirals", seed=5)
    c, _ = D.load("spirals", data_seed=1)
    assert torch.equal(a.X, b.X) and not torch.equal(a.X, c.X)


@pytest.mark.parametrize("frac", [0.0, 0.1, 0.37, 1.0])
def test_label_noise_flips_exactly_round_frac_n_each_to_another_class(frac):
    clean, _ = D.load("digits")
    noisy, _ = D.load("digits", label_noise=frac, seed=3)
    changed = torch.nonzero(noisy.y != clean.y).flatten().tolist()
    n = len(clean)
    assert len(changed) == round(frac * n) == noisy.info["flipped"]
    assert changed == noisy.info["flipped_indices"] and noisy.info["label_noise"] == frac
    assert torch.equal(noisy.X, clean.X)
    again, _ = D.load("digits", label_noise=frac, seed=3)
    assert torch.equal(again.y, noisy.y)
    if 0 < frac < 1:
        other, _ = D.load("digits", label_noise=frac, seed=4)
        assert not torch.equal(other.y, noisy.y)
        # the new classes are spread over the other classes, not a fixed shift
        shifts = ((noisy.y - clean.y) % 10)[changed]
        assert len(set(shifts.tolist())) > 1


def test_label_noise_two_classes_must_swap():
    clean, test = D.load("teacher")
    noisy, test2 = D.load("teacher", label_noise=0.25, seed=1)
    diff = noisy.y != clean.y
    assert int(diff.sum()) == 500 and torch.equal(noisy.y[diff], 1 - clean.y[diff])
    assert torch.equal(test.y, test2.y)  # the test set is never corrupted


def test_train_size_is_a_balanced_deterministic_subset_then_noise():
    full, test_full = D.load("digits")
    sub, test = D.load("digits", train_size=100, seed=2)
    assert len(sub) == 100 and torch.equal(test.X, test_full.X)
    assert np.bincount(sub.y.numpy(), minlength=10).tolist() == [10] * 10
    idx = sub.info["subset_indices"]
    assert idx == sorted(set(idx)) and len(idx) == 100
    assert torch.equal(sub.X, full.X[idx]) and torch.equal(sub.y, full.y[idx])
    same, _ = D.load("digits", train_size=100, seed=2)
    other, _ = D.load("digits", train_size=100, seed=3)
    assert same.info["subset_indices"] == idx != other.info["subset_indices"]
    odd, _ = D.load("digits", train_size=25)
    assert sorted(np.bincount(odd.y.numpy()).tolist()) == [2] * 5 + [3] * 5
    both, _ = D.load("digits", train_size=50, label_noise=0.3, seed=1)
    clean = full.y[both.info["subset_indices"]]
    assert int((both.y != clean).sum()) == 15 == both.info["flipped"]
    assert both.info["train_size"] == 50 and both.info["full_train_size"] == len(full)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
@pytest.mark.parametrize("give", ["folder", "parent"])
def test_cifar_reader_on_a_tiny_fake(tmp_path, kind, give):
    folder = write_fake_cifar(tmp_path, kind)
    root = folder if give == "folder" else tmp_path
    train, test = D.load(kind, root=str(root))
    C = 10 if kind == "cifar10" else 100
    key = b"labels" if kind == "cifar10" else b"fine_labels"
    files = [f"data_batch_{i}" for i in range(1, 6)] if kind == "cifar10" else ["train"]
    Xtr, ytr = _raw_cifar(folder, files, key)
    Xte, yte = _raw_cifar(folder, ["test_batch" if kind == "cifar10" else "test"], key)
    assert (len(train), len(test)) == (100, 20)
    assert train.input_shape == (3, 32, 32) and train.num_classes == C == test.num_classes
    assert train.y.tolist() == ytr.tolist() and test.y.tolist() == yte.tolist()
    # per-channel standardization with the training set's mean and std of pixels in [0, 1]
    raw = Xtr / 255.0
    mean, std = raw.mean(axis=(0, 2, 3), keepdims=True), raw.std(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(train.X.numpy(), (raw - mean) / std, atol=1e-5)
    np.testing.assert_allclose(test.X.numpy(), (Xte / 255.0 - mean) / std, atol=1e-5)
    assert train.info["classes"][:2] == (["c0", "c1"] if kind == "cifar10" else ["f0", "f1"])


def test_cifar100_coarse_labels_and_env_root(tmp_path, monkeypatch):
    folder = write_fake_cifar(tmp_path, "cifar100")
    monkeypatch.setenv("LOSSATLAS_DATA", str(tmp_path))
    train, _ = D.load("cifar100", labels="coarse")
    _, coarse = _raw_cifar(folder, ["train"], b"coarse_labels")
    assert train.num_classes == 20 and train.y.tolist() == coarse.tolist()


def test_cifar_errors_name_root_and_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.delenv("LOSSATLAS_DATA", raising=False)
    with pytest.raises(LossAtlasError, match=r"root is required.*cifar-10-batches-py"):
        D.load("cifar10")
    with pytest.raises(LossAtlasError, match=r"root=.*cifar-100-python/train"):
        D.load("cifar100", root=tmp_path / "nowhere")
    folder = write_fake_cifar(tmp_path, "cifar10")
    (folder / "test_batch").unlink()
    with pytest.raises(LossAtlasError, match=r"root: .*test_batch"):
        D.load("cifar10", root=tmp_path)


@pytest.mark.parametrize(
    ("kw", "pattern"),
    [
        ({"name": "imagenet"}, r"name='imagenet' is not a known dataset; use one of .*digits"),
        ({"name": "digits", "label_noise": 1.5}, r"label_noise=1.5 must be a fraction"),
        ({"name": "digits", "label_noise": -0.1}, r"label_noise=-0.1"),
        ({"name": "digits", "train_size": 0}, r"train_size=0 must be an integer between 1 and"),
        ({"name": "digits", "train_size": 5000}, r"train_size=5000"),
        ({"name": "digits", "seed": -1}, r"seed=-1"),
        ({"name": "digits", "imge": True}, r"'digits' does not take the option imge.*image"),
        ({"name": "mnist1d", "chanels": True}, r"'mnist1d' does not take the option chanels"),
        ({"name": "tokens", "vocab_size": 2}, r"vocab_size=2 must be at least num_classes=4"),
        ({"name": "cifar100", "labels": "medium"}, r"labels='medium'"),
        ({"name": "no_such_module_xyz:make"}, r"name='no_such_module_xyz:make'.*cannot be imp"),
        ({"name": "numpy:no_such_thing"}, r"has no attribute 'no_such_thing'"),
    ],
)
def test_clear_errors_name_the_argument(kw, pattern, tmp_path):
    if kw["name"] == "cifar100":
        write_fake_cifar(tmp_path, "cifar100")
        kw = {**kw, "root": tmp_path}
    with pytest.raises(LossAtlasError, match=pattern):
        D.load(**kw)


def test_register_and_from_factory(tmp_path, monkeypatch):
    X, y = torch.randn(30, 3), torch.arange(30) % 3

    def pair(n=30):
        return torch.utils.data.TensorDataset(X[:n], y[:n]), (X[:5], y[:5])

    D.register("toy_pair", pair)
    try:
        assert "toy_pair" in D.names() and "digits" in D.names()
        train, test = D.load("toy_pair", n=12, label_noise=0.5, seed=0)
        assert len(train) == 12 and len(test) == 5 and train.num_classes == 3
        assert train.info["flipped"] == 6
        with pytest.raises(LossAtlasError, match="already a registered dataset"):
            D.register("toy_pair", pair)
        with pytest.raises(LossAtlasError, match="does not take the option m; its options are: n"):
            D.load("toy_pair", m=1)
    finally:
        catalog._REGISTRY.pop("toy_pair")
    (tmp_path / "my_data_mod.py").write_text(
        "import torch\n"
        "def make(n=8):\n"
        "    return torch.randn(n, 2), torch.arange(n) % 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    train, test = D.from_factory("my_data_mod:make", n=10)
    assert len(train) == len(test) == 10 and train.info["test_is_train"]
    train, _ = D.load("my_data_mod:make", n=10, train_size=4)
    assert len(train) == 4 and train.input_shape == (2,)
    sys.modules.pop("my_data_mod", None)
