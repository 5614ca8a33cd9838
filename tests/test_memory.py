"""The memory model: budgets, the batched and restarted paths it forces, the sentence when
nothing fits. Every bounded result is compared with the unbounded one or with a dense Hessian."""

import numpy as np
import pytest
import torch

import lossatlas as la
from lossatlas.core import memory as M
from lossatlas.core.errors import LossAtlasError
from lossatlas.measurements.hessian.eigenpairs import basis_vectors
from lossatlas.measurements.hessian.lanczos import thick_restart
from lossatlas.measurements.hessian.operator import HessianOperator
from lossatlas.measurements.trajectory.planes import plan_bytes


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    X, y = torch.randn(96, 6), torch.randint(0, 3, (96,))
    obj = la.Objective(net, (X, y))  # one batch of 96
    H = HessianOperator(obj, memory="1GB").dense()
    return obj, H, np.linalg.eigvalsh(H.numpy())


def _whole(plan: float) -> int:
    """The budget whose spendable part (headroom left out) is ``plan`` bytes."""
    return int(plan / (1 - M.HEADROOM)) + 1


def test_budget_sources(monkeypatch):
    monkeypatch.setenv(M.ENV, "3GB")
    assert M.budget() == 3 * 10**9
    with M.limit("512MiB"):
        assert M.budget() == 2**29
        assert M.budget("1kB") == 1000  # an explicit memory= wins
    assert M.budget() == 3 * 10**9
    monkeypatch.delenv(M.ENV)
    assert 0 < M.budget() <= M.available()
    for bad in ("lots", "-1GB", 0):
        with pytest.raises(LossAtlasError, match="memory="):
            M.parse_bytes(bad)


def test_saved_bytes_counts_the_graph_linearly():
    lin = torch.nn.Linear(50, 40)

    def graph(n):
        x = torch.randn(n, 50)
        return M.saved_bytes(lambda: torch.tanh(lin(x)).sum())[0]

    # Linear saves its input (n·50·4 bytes), tanh its output (n·40·4)
    assert graph(20) - graph(10) == 10 * (50 + 40) * 4


def test_tiny_budget_splits_the_data_and_products_equal(small, monkeypatch):
    obj, H, _ = small
    free = HessianOperator(obj, memory="1GB")
    assert free.method == "graph" and len(free.batches) == 1
    cost = free.graph_cost
    tight = HessianOperator(obj, memory=_whole((1 + 1 / M.SLACK) * cost(20)))  # its peak
    assert len(tight.batches) >= 5 and max(tight.batch_samples) <= 20
    assert tight.method in ("double", "fwdrev")  # the kept graphs of 96 samples do not fit
    assert abs(sum(tight.weights) - 1) < 1e-12
    V = torch.randn(free.dim, 3, dtype=torch.float64)
    torch.testing.assert_close(tight.matmat(V), H @ V, rtol=1e-5, atol=1e-6)
    # batches capped for speed (HVP_BATCH_BYTES) whose graphs all fit: kept, still batched
    monkeypatch.setattr(la.hessian.operator, "HVP_BATCH_BYTES", (1 + 1 / M.SLACK) * cost(20))
    both = HessianOperator(obj, memory="1GB")
    assert both.method == "graph" and len(both.batches) >= 4
    torch.testing.assert_close(both.matmat(V), H @ V, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tight.gradient(), free.gradient(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_thick_restart_matches_dense_spectrum(small, which):
    _, H, ev = small
    converged = lambda th, r: r <= 1e-9 * np.maximum(np.abs(th), 1e-300)  # noqa: E731
    v0 = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    run = thick_restart(lambda q: H @ q, v0, 3, which, 14, converged, 5000)
    want = ev[-3:] if which == "LA" else ev[:3]
    assert run.converged and run.restarts > 0
    np.testing.assert_allclose(run.values, want, rtol=1e-7)
    R = H @ run.vectors.T - run.vectors.T * torch.from_numpy(run.values)
    np.testing.assert_allclose(torch.linalg.vector_norm(R, dim=0), run.residuals, atol=1e-8)


def test_eigs_in_a_tiny_budget_restarts_and_agrees(small):
    obj, _, ev = small
    free = la.hessian.eigs(obj, k=3, which="both", tol=1e-6)
    op = HessianOperator(obj, memory="1GB")
    budget = _whole(op.bytes + 8 * op.dim * (3 + 2 + 16))  # room for 16 basis vectors
    with M.limit(budget):
        bounded = HessianOperator(obj)
        assert basis_vectors(bounded, 3, 1000) <= 16  # far below what one run takes
        spec = la.hessian.eigs(obj, k=3, which="both", tol=1e-6)
    want = np.concatenate([ev[:3], ev[-3:]])
    np.testing.assert_allclose(spec.values, want, rtol=1e-5)
    np.testing.assert_allclose(free.values, want, rtol=1e-5)
    assert np.all(spec.residuals <= 1e-6 * np.abs(spec.values))
    assert spec.matvecs >= free.matvecs  # restarts cost products, not memory


def test_one_sentence_when_nothing_fits(small):
    obj, _, _ = small
    with M.limit("2kB"), pytest.raises(LossAtlasError) as err:
        la.hessian.eigs(obj, k=2)
    msg = str(err.value)
    assert "needs about" in msg and "memory budget is 2.0 kB" in msg and "params=" in msg
    assert msg.count(". ") == 0 and "\n" not in msg
    op = HessianOperator(obj, memory="1GB")
    room = op.graph_cost(1) + 8 * op.dim * 12  # not one sample beside the basis
    with pytest.raises(LossAtlasError, match=r"eigs\(k=5\).*one sample.*a smaller k"), \
            M.limit(room):
        la.hessian.eigs(obj, k=5)
    given = HessianOperator(obj, memory=_whole(op.bytes + 8 * op.dim * 12))  # graph, no basis
    with pytest.raises(LossAtlasError, match=r"eigs\(k=5\).*Lanczos basis.*a smaller k"):
        la.hessian.eigs(obj, k=5, operator=given)
    with pytest.raises(LossAtlasError, match=r"method='graph'.*needs about"):
        HessianOperator(obj, method="graph", memory=op.graph_cost(30))


def test_pca_asks_the_budget_and_streams_to_the_same_plane(tmp_path):
    g = torch.Generator().manual_seed(0)
    D, k = 300, 9
    drift, bend = torch.randn(D, generator=g), torch.randn(D, generator=g)
    files = []
    for t in range(k):
        w = t * drift + np.sin(t) * bend + 0.1 * torch.randn(D, generator=g)
        files.append(tmp_path / f"c{t}.pt")
        torch.save({"w": w}, files[-1])
    free = la.trajectory.pca(files, progress=False, memory="1GB")
    assert not free.meta["streamed"] and free.meta["memory_plan"] == plan_bytes(D, k, k)
    # a scoped budget that holds two rows beside the work: streamed, two rows at a time
    with M.limit(_whole(plan_bytes(D, k, 2))):
        tight = la.trajectory.pca(files, progress=False)
    assert tight.meta["streamed"] and tight.meta["block_size"] == 2
    assert tight.meta["memory_plan"] <= M.usable(tight.meta["memory_budget"])
    np.testing.assert_allclose(tight.explained_variance_ratio, free.explained_variance_ratio,
                               rtol=1e-12)
    for a, b in zip(tight.directions, free.directions):
        np.testing.assert_allclose(a["w"].numpy(), b["w"].numpy(), rtol=0, atol=1e-12)
    # not one row fits: the sentence says how much and how; stream=False is refused too
    with M.limit(_whole(plan_bytes(D, k, 0))), pytest.raises(LossAtlasError) as err:
        la.trajectory.pca(files, progress=False)
    msg = str(err.value)
    assert f"needs about {M.fmt(plan_bytes(D, k, 1) / (1 - M.HEADROOM))}" in msg
    assert "names=" in msg and "slice=" in msg and M.ENV in msg and "\n" not in msg
    with pytest.raises(LossAtlasError, match=r"stream=False.*stream=None"):
        la.trajectory.pca(files, stream=False, progress=False, memory=_whole(plan_bytes(D, k, 2)))
    with pytest.raises(LossAtlasError, match=r"block_size=5.*smaller block_size"):
        la.trajectory.pca(files, block_size=5, progress=False, memory=_whole(plan_bytes(D, k, 2)))
