"""Executors: every one returns what fn gives, for every item once, and fits la.surface."""

from __future__ import annotations

import pytest
import torch

import lossatlas as la
from lossatlas.core.errors import LossAtlasError
from lossatlas.sweeps.executors import (
    LocalExecutor,
    ProcessExecutor,
    make_executor,
    run_job,
    threads,
)


def square(x: int) -> int:
    return x * x


def torch_threads(_) -> int:
    return torch.get_num_threads()


def fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def test_local_in_order_and_lazy():
    seen = []

    def gen():
        for i in range(5):
            seen.append(i)
            yield i

    it = LocalExecutor().as_completed(square, gen())
    assert next(it) == (0, 0)
    assert seen == [0]  # items are pulled one at a time
    assert list(it) == [(i, i * i) for i in range(1, 5)]
    assert list(LocalExecutor().map(square, range(4))) == [0, 1, 4, 9]


def test_threads_context_restores():
    before = torch.get_num_threads()
    with threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    assert run_job(torch_threads, None, 1) == 1
    assert LocalExecutor(threads=None).map(torch_threads, [0]).__next__() == before


@pytest.mark.slow
def test_process_executor_pairs_every_item():
    with ProcessExecutor(2, prefetch=3) as ex:
        got = dict(ex.as_completed(square, iter(range(7))))
        assert got == {i: i * i for i in range(7)}
        assert sorted(ex.map(square, range(3))) == [0, 1, 4]  # the pool is reused
        assert set(ex.map(torch_threads, range(2))) == {1}
        with pytest.raises(ValueError, match="three"):
            list(ex.map(fails_on_three, range(5)))


def test_make_executor_and_bad_arguments():
    assert isinstance(make_executor(workers=1), LocalExecutor)
    ex = make_executor(workers=2)
    assert isinstance(ex, ProcessExecutor) and ex.workers == 2
    ex.close()
    with pytest.raises(LossAtlasError, match="workers"):
        ProcessExecutor(0)
    with pytest.raises(LossAtlasError, match="threads"):
        LocalExecutor(threads=0)


def test_surface_with_process_executor_equals_in_process():
    """la.surface's chunks go through executor.map; worker processes give the same numbers."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    X, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    obj = la.Objective(model, (X, y))
    d1 = la.directions.gaussian(model, norm="filter", seed=0)
    d2 = la.directions.gaussian(model, norm="filter", seed=1)
    ref = la.surface(obj, d1, d2, resolution=5, progress=False, executor=LocalExecutor())
    with ProcessExecutor(2) as ex:
        par = la.surface(obj, d1, d2, resolution=5, progress=False, executor=ex, chunk_size=4)
    assert torch.allclose(torch.as_tensor(ref.loss), torch.as_tensor(par.loss), rtol=0, atol=1e-6)
    assert torch.allclose(torch.as_tensor(ref.accuracy), torch.as_tensor(par.accuracy))


def test_unreachable_ray_address_fails_fast():
    pytest.importorskip("ray")
    import ray

    from lossatlas.sweeps.executors import RayExecutor

    if ray.is_initialized():
        pytest.skip("Ray is already initialized in this process")
    with pytest.raises(LossAtlasError, match="nothing answers"):
        RayExecutor("127.0.0.1:1")


def test_an_unknown_start_method_is_refused_in_one_sentence():
    from lossatlas.core.errors import LossAtlasError
    from lossatlas.sweeps.executors import ProcessExecutor

    with pytest.raises(LossAtlasError, match=r"^context='bogus' is not a start method here"):
        ProcessExecutor(workers=2, context="bogus")
