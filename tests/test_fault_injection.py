"""Fault injection: SIGKILLed surfaces, training runs and sweeps resume to the uninterrupted
result bit for bit and lose nothing finished (benchmarks/fault_injection.py does the killing);
worker processes die with their SIGKILLed driver."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the fork server's children import fault_injection by name
import fault_injection as FI  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["surface", "train", "sweep"])
def test_sigkill_at_random_moments_loses_nothing(kind, tmp_path):
    fig = FI.inject(kind, kills=10, seed=0, root=tmp_path / kind)
    print(FI.describe(fig))  # the figures, kept in the test output (pytest -s / -rA)
    assert fig["kills"] >= 10 and fig["checks"] == fig["kills"]
    assert fig["identical"] == fig["rounds"] >= 1
    assert fig["mid_work"] >= 3  # kills landed in the middle of the work, not only around it


def _descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = Path(f"/proc/{p}/stat").read_text()
            except OSError:
                continue
            kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(p))
    out, stack = [], [pid]
    while stack:
        for c in kids.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


DRIVER = """
import sys, time
from lossatlas.sweeps.executors import ProcessExecutor
if __name__ == "__main__":
    ex = ProcessExecutor(2, context=sys.argv[1] if sys.argv[1] != "default" else None)
    for _ in ex.map(time.sleep, [60] * 4):
        pass
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("context, family_size", [("default", 2), ("forkserver", 4)])
def test_workers_die_with_their_sigkilled_driver(tmp_path, context, family_size):
    # default: two workers forked from the driver; forkserver: server, tracker, two workers
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    env = {**os.environ, "LOSSATLAS_QUIET": "1",
           "PYTHONPATH": os.pathsep.join([str(BENCH.parent / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, str(script), context], env=env)
    try:
        deadline = time.time() + 120
        while len(_descendants(driver.pid)) < family_size and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        family = _descendants(driver.pid)
        assert len(family) >= family_size, f"the pool did not start: {family}"
    except BaseException:
        driver.kill()
        raise
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    deadline = time.time() + 10
    while any(_running(p) for p in family) and time.time() < deadline:
        time.sleep(0.1)
    left = [p for p in family if _running(p)]
    for p in left:  # clean up before failing: these are this test's own processes
        os.kill(p, signal.SIGKILL)
    assert not left, f"{len(left)} of {len(family)} child processes outlived their driver"
