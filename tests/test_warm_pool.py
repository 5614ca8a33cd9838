"""Process pools stay warm: a second executor with the same settings reuses the workers."""

import os

from lossatlas.sweeps.executors import ProcessExecutor


def pid(_):
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
