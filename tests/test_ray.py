"""Ray: a sweep and a surface on a local two-worker cluster equal the in-process run, and a
failing task is retried. The cluster is started (and stopped) by the module fixture."""

from __future__ import annotations

import json
import os

import pytest
import torch

import lossatlas as la
from lossatlas import sweeps as S
from lossatlas.sweeps.executors import LocalExecutor

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
pytestmark = [pytest.mark.ray, pytest.mark.slow]  # a local Ray cluster starts (about 8 s)

SPEC = {
    "name": "ray", "seeds": [0, 1],
    "data": {"name": "digits", "train_size": 200},
    "model": {"name": "mlp"},
    "train": {"epochs": 2, "lr": 0.05},
    "load": {"param": "width", "values": [8]},
    "temperature": {"param": "batch_size", "values": [32, 128]},
    "measure": {"connect": {"epochs": 1}, "cka_samples": 64},
}


@pytest.fixture(scope="module")
def executor():
    from lossatlas.sweeps.executors import RayExecutor

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ex = RayExecutor("local", num_cpus=2, max_retries=2)
    yield ex
    ex.close()
    assert not ray.is_initialized()


def _rows(out) -> dict:
    rows = [json.loads(x) for x in (out / S.RESULTS).read_text().splitlines()]
    return {r["key"]: (r["metrics"], r.get("curve")) for r in rows}


def test_sweep_on_ray_equals_local(executor, tmp_path):
    local = S.run(SPEC, tmp_path / "local", executor=LocalExecutor(), progress=False)
    remote = S.run(SPEC, tmp_path / "ray", executor=executor, progress=False)
    assert _rows(tmp_path / "local") == _rows(tmp_path / "ray")  # bit for bit, every job
    assert remote.cells == local.cells
    for f in (tmp_path / "local" / "models").iterdir():
        a = torch.load(f, weights_only=True)
        b = torch.load(tmp_path / "ray" / "models" / f.name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_surface_chunks_on_ray(executor):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    obj = la.Objective(model, (torch.randn(40, 4), torch.randint(0, 3, (40,))))
    d1 = la.directions.gaussian(model, norm="filter", seed=0)
    d2 = la.directions.gaussian(model, norm="filter", seed=1)
    ref = la.surface(obj, d1, d2, resolution=5, progress=False)
    got = la.surface(obj, d1, d2, resolution=5, progress=False, executor=executor, chunk_size=5)
    assert torch.equal(torch.as_tensor(ref.loss), torch.as_tensor(got.loss))


def test_failed_task_is_retried(executor, tmp_path):
    def flaky(path: str) -> int:
        """Kills its worker on the first call (leaving a marker), succeeds when rerun.
        (A local function: cloudpickle ships it by value, the test module is not importable.)"""
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return 7

    marker = str(tmp_path / "failed-once")
    assert list(executor.map(flaky, [marker])) == [7]
    assert os.path.exists(marker)
