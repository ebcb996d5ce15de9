"""CPU counters (from /proc) of the benchmark's processes and of the whole machine, and the
machine's description; every party's CPU is counted, since they all share the same CPUs."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.stream.config import Config, say
from benchmarks.stream.database import maintenance_url

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (0.0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    rest = stat.rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS


def comm_cpu(names: Iterable[str]) -> dict[int, float]:
    """CPU seconds of every process whose command name is in names (e.g. all postgres), by pid."""
    wanted, found = set(names), {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in wanted:
                    found[int(entry.name)] = proc_cpu(int(entry.name))
    return found


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


GROUPS = {"postgres": ["postgres"], "redis": ["redis-server"]}


@dataclass
class CpuSample:
    at: float
    cpu: dict[str, float]
    groups: dict[str, dict[int, float]]
    machine: tuple[int, int]


Pids = dict[str, list[int]]  # a party ("web", "fake") -> its processes


def cpu_sample(pids: Pids) -> CpuSample:
    """CPU seconds so far of each party (all its processes), this process, and the machine."""
    cpu = {name: sum(proc_cpu(pid) for pid in group) for name, group in pids.items()}
    times = os.times()
    cpu["clients"] = times.user + times.system
    groups = {name: comm_cpu(comms) for name, comms in GROUPS.items()}
    return CpuSample(time.monotonic(), cpu, groups, machine_jiffies())


def cpu_delta(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """CPU seconds per process over the window, the rest of the machine's, and wall seconds.

    `postgres` counts every postgres process (other databases' too; a backend that exited in
    the window is missed); `other_cpu_s` is whatever else ran on the machine meanwhile (e.g.
    someone's test suite): this benchmark shares the CPUs with everything else.
    """
    out = {f"{k}_cpu_s": round(after.cpu[k] - before.cpu[k], 3) for k in before.cpu}
    for name, now in after.groups.items():
        then = before.groups[name]
        out[f"{name}_cpu_s"] = round(
            sum(max(0.0, v - then.get(pid, 0.0)) for pid, v in now.items()), 3
        )
    busy = (after.machine[0] - before.machine[0]) / CLOCK_TICKS
    total = max(1, after.machine[1] - before.machine[1]) / CLOCK_TICKS
    out["other_cpu_s"] = round(max(0.0, busy - sum(out.values())), 3)
    out["wall_s"] = round(after.at - before.at, 3)
    out["machine_busy_frac"] = round(busy / total, 3)
    return out


def background_load(seconds: float = 2.0) -> float:
    """CPUs' worth of work the machine does while this benchmark does nothing."""
    before = machine_jiffies()
    time.sleep(seconds)
    after = machine_jiffies()
    return round((after[0] - before[0]) / CLOCK_TICKS / seconds, 2)


def wait_until_idle(pid: int, timeout: float = 15.0) -> None:
    """Wait until a process uses under 5% of a CPU over half a second (or timeout passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = proc_cpu(pid)
        time.sleep(0.5)
        if proc_cpu(pid) - before < 0.025:
            return


def wait_until_quiet(limit: float, timeout: float) -> float:
    """Wait (at most timeout seconds) until the background load is under limit CPUs."""
    deadline = time.monotonic() + timeout
    load = background_load()
    while load > limit and time.monotonic() < deadline:
        say(f"the machine is busy ({load:.2f} CPUs of other work); waiting for it to settle")
        time.sleep(5)
        load = background_load()
    return load


def machine_info(cfg: Config) -> dict[str, Any]:
    import psycopg
    import redis

    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    with psycopg.connect(maintenance_url(cfg.database_url)) as conn:
        (pg,) = conn.execute("SHOW server_version").fetchone() or ("?",)
    redis_version = redis.Redis.from_url(cfg.redis_url).info().get("redis_version", "?")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgres": pg,
        "redis": redis_version,
    }
