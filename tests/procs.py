"""Processes the integration tests start (servers, workers, schedulers, the command line): a free
loopback port, the environment of a process with a Prefect home of its own, and a stop that ends a
whole process group, terminated then killed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def prefect_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any PREFECT_ setting of the caller's, with `home` as the
    Prefect home and analytics off (offline), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", **extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (from /proc; zombies count as gone)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(proc: subprocess.Popen, grace: float = 20) -> None:
    if proc.poll() is not None:
        _kill_group(proc.pid)  # the leader is gone; what it started in its group goes too
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    _kill_group(proc.pid)


def stop_all(procs: list[subprocess.Popen], grace: float = 20) -> None:
    """`stop` for several at once: every group is asked to end first, then all get one shared grace
    period (a server and three workers each taking their time would otherwise cost it four times)."""
    live = [p for p in procs if p.poll() is None]
    for p in live:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    for p in live:
        try:
            p.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            stop(p, grace=1)  # terminated again, then killed
    for p in procs:  # a leader that exited may leave members of its group behind: they go too
        _kill_group(p.pid)

