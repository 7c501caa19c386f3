"""Thread pools sized to the cores a process is actually given.

torch's intra-op pool defaults to every core of the machine, and its worker threads spin at
every barrier. Beside other CPU-bound work that is the worst case: a parallel region waits for
its slowest thread, which shares a core with the neighbour, while the others burn their time
slice spinning. Measured on 2 cores before this module: 60 pretraining steps took 3.0x their
time alone beside one single-threaded busy loop (2x would be a fair share) and 6-10x beside
three. So a process that was not told how many threads to use takes the cores it may run on
(its CPU affinity) minus the cores other processes are keeping busy right now, and checks again
as it goes. Thread counts do not change results here: pretraining and RL give bitwise equal
weights and metrics with 1 and 2 threads (tests/test_reproducibility.py).
"""

from __future__ import annotations

import os
import time


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _busy_ticks() -> tuple[int, int] | None:
    """(busy jiffies of the whole machine, jiffies of this process) or None off Linux."""
    try:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)  # idle + iowait
    return sum(cpu[:8]) - idle, int(fields[11]) + int(fields[12])  # utime + stime


def _others(a: tuple[int, int], b: tuple[int, int], seconds: float) -> float:
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return max(0.0, ((b[0] - a[0]) - (b[1] - a[1])) / hz / max(seconds, 1e-3))


def others_busy(interval: float = 0.2) -> float | None:
    """Cores kept busy by *other* processes over `interval` seconds (None off Linux)."""
    a, t0 = _busy_ticks(), time.monotonic()
    if a is None:
        return None
    time.sleep(interval)
    b = _busy_ticks()
    return None if b is None else _others(a, b, time.monotonic() - t0)


def _fair(cores: int, busy: float | None) -> int:
    return cores if busy is None else max(1, min(cores, round(cores - busy)))


def fair_threads(interval: float = 0.2) -> int:
    """Threads worth running now: usable cores minus those others keep busy (at least 1)."""
    return _fair(usable_cores(), others_busy(interval))


def fixed_by_user(threads: int = 0) -> bool:
    """An explicit thread count (a config value or OMP_NUM_THREADS) is never overridden."""
    return threads > 0 or "OMP_NUM_THREADS" in os.environ


class ThreadGovernor:
    """Sets torch's intra-op threads to the fair count now, then at `tick()` calls (between
    optimizer steps) at most every `every_s` seconds, from what other processes used since the
    last check (no extra waiting); an explicit count from the user is kept as it is."""

    def __init__(self, threads: int = 0, every_s: float = 5.0) -> None:
        import torch

        self.torch, self.every_s = torch, every_s
        self.fixed = fixed_by_user(threads)
        if threads > 0:
            torch.set_num_threads(threads)
        if not self.fixed:
            self._set(fair_threads())
        self.sample, self.last = _busy_ticks(), time.monotonic()

    def _set(self, n: int) -> None:
        if n != self.torch.get_num_threads():
            self.torch.set_num_threads(n)

    def tick(self) -> None:
        now = time.monotonic()
        if self.fixed or self.sample is None or now - self.last < self.every_s:
            return
        sample = _busy_ticks()
        if sample is None:
            return
        self._set(_fair(usable_cores(), _others(self.sample, sample, now - self.last)))
        self.sample, self.last = sample, now
