"""Process pools stay warm: a second executor with the same settings reuses the workers."""

import os
import time

from lossatlas.sweeps.executors import ProcessExecutor


def pid(_):
    time.sleep(0.1)  # long enough that both workers take jobs (one could answer all six)
    return os.getpid()


def test_second_executor_reuses_the_warm_workers():
    with ProcessExecutor(2) as ex:
        first = set(ex.map(pid, range(6)))
    with ProcessExecutor(2) as ex:  # started once, reused: the same processes answer
        again = set(ex.map(pid, range(6)))
    assert again <= first and os.getpid() not in first
    with ProcessExecutor(2, warm=False) as ex:  # a private pool: new processes, shut at close
        private = set(ex.map(pid, range(6)))
        pool = ex._pool
    assert not private & first and ex._pool is None and pool._shutdown_thread


def state(_):
    import torch

    return torch.is_grad_enabled(), torch.get_default_dtype(), torch.get_num_threads()


def test_workers_start_clean_whatever_the_driver_set():
    import threading

    import torch

    from lossatlas.sweeps.executors import fork_is_safe

    assert not fork_is_safe(2) and not fork_is_safe(None)  # a forked OpenMP pool is unusable
    alone = threading.active_count() == 1
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad(), ProcessExecutor(2, warm=False) as ex:
            seen = set(ex.map(state, range(4)))
            method = ex.start_method
    finally:
        torch.set_default_dtype(torch.float32)
    assert seen == {(True, torch.float32, 1)}
    # forked from this process when it runs no other thread, else from the fork server
    assert method == ("fork" if alone and fork_is_safe(1) else "forkserver")
