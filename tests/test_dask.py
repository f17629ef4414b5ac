"""The run on a real Dask cluster on loopback: a `dask scheduler` and two `dask worker` processes, each
with its own HOME and TMPDIR, driven by the command line as a user runs it (`--runner dask
--set dask_address=...`), compared with the sequential run (the README's demo command, conftest's
demo_cli_run); then one worker SIGKILLed in the middle of a step. One cluster serves both tests: its
workers carry a fault point that stays disarmed while its mark file exists. Every process started here
is stopped at the end (process groups, terminated then killed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from procs import free_port, group_members, prefect_env, stop_all
from tasks.run.cache import MANIFEST, StepCache

pytestmark = pytest.mark.slow


class Cluster:
    def __init__(self, tmp: Path, worker_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.logs = tmp
        base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self._start([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                     str(self.port), "--no-dashboard"], base, "scheduler")
        self.workers = []
        for i in range(2):
            home = tmp / f"worker{i}"
            (home / "tmp").mkdir(parents=True)
            env = {**base, "HOME": str(home), "TMPDIR": str(home / "tmp"), **(worker_env or {})}
            # --no-nanny: the pid started here is the worker itself, the one a placement names
            self.workers.append(self._start([sys.executable, "-m", "distributed.cli.dask_worker", self.address,
                                             "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", f"w{i}"],
                                            env, f"worker{i}"))
        self._wait_for_workers(2)

    def _start(self, argv, env, name) -> subprocess.Popen:
        f = open(self.logs / f"{name}.log", "w")
        p = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=self.logs, start_new_session=True)
        self.procs.append(p)
        return p

    def _wait_for_workers(self, n: int) -> None:
        from distributed import Client

        deadline = time.time() + 120
        while True:
            try:
                with Client(self.address, timeout=5) as c:
                    if len(c.scheduler_info()["workers"]) >= n:
                        return
            except OSError:
                pass
            assert time.time() < deadline, (self.logs / "worker0.log").read_text()[-2000:]
            time.sleep(1)

    def close(self) -> None:
        # A worker that ran flow tasks logs "End worker" on SIGTERM and then does not exit for 20 s
        # (a lingering non-daemon thread); 5 s of grace, then it is killed, with its process group.
        stop_all(list(reversed(self.procs)), grace=5)
        deadline = time.time() + 10  # SIGKILLed processes leave once the kernel has reaped them
        while (left := {p.pid: group_members(p.pid) for p in self.procs if group_members(p.pid)}) and \
                time.time() < deadline:
            time.sleep(0.2)
        assert not left, f"cluster processes outlived the cluster: {left}"


def _cli(args: list[str], home: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "flows/int8.py", "--demo", "--no-gate", "--set", "eval.providers=cpu", *args],
                            cwd=ROOT, env=prefect_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen, timeout: float = 600) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-4000:]
    return out


def _keys(cache: Path) -> dict[str, set[str]]:
    return {step: {e.name for e in (cache / step).iterdir() if not e.name.startswith(".")}
            for step in ("calibration", "quantize", "refine") if (cache / step).is_dir()}


def _no_torn_entries(cache: Path) -> int:
    """Every entry under its final name is complete (its manifest's sha256s hold); returns the count."""
    sc, n = StepCache(cache), 0
    for man in cache.glob(f"*/*/{MANIFEST}"):
        entry = man.parent
        if entry.name.startswith("."):
            continue
        assert sc.get(entry.parent.name, entry.name) is not None, f"torn cache entry {entry}"
        n += 1
    for d in cache.glob("*/*"):
        if d.is_dir() and not d.name.startswith("."):
            assert (d / MANIFEST).is_file(), f"cache entry {d} without a manifest"
    assert not sc.corrupt
    return n


def _same_results(a: dict, b: dict) -> None:
    assert b["fp32"]["map50_95"] == a["fp32"]["map50_95"] and b["int8"]["map50_95"] == a["int8"]["map50_95"]
    assert b["fp32"]["map50"] == a["fp32"]["map50"] and b["int8"]["detections"] == a["int8"]["detections"]
    assert b["quantization"]["sha256"] == a["quantization"]["sha256"]  # same scales, same recovered model
    assert b["calibration"]["sha256"] == a["calibration"]["sha256"]


@pytest.fixture(scope="module")
def sequential(demo_cli_run):
    return demo_cli_run["runs"], json.loads((demo_cli_run["run"] / "results" / "summary.json").read_text())


@pytest.fixture(scope="module")
def home(demo_cli_run, tmp_path_factory):
    """The Prefect home both command-line runs here use: a copy of the one the demo run left, so
    neither temporary server migrates a new database."""
    home = tmp_path_factory.mktemp("dask-cli") / "prefect-home"
    shutil.copytree(demo_cli_run["home_after"], home)
    return home


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two workers whose fp32 evaluation shard pauses (for a SIGKILL) once the mark file is removed:
    while it exists, the first worker to arrive finds it taken and goes on (tasks/run/faults.py)."""
    tmp = tmp_path_factory.mktemp("cluster")
    mark = tmp / "paused"
    mark.write_text("disarmed")
    c = Cluster(tmp, {"YOLO_LOWBIT_FAULT_PAUSE": "fp32-shard-computed", "YOLO_LOWBIT_FAULT_MARK": str(mark),
                      "YOLO_LOWBIT_FAULT_ONCE": "1"})
    c.mark = mark
    try:
        yield c
    finally:
        c.close()


def test_demo_on_a_dask_cluster_equals_the_sequential_run(sequential, cluster, home, tmp_path):
    seq_root, seq = sequential
    runs = tmp_path / "runs"
    _finish(_cli(["--runner", "dask", "--set", f"dask_address={cluster.address}", "--run-root", str(runs), "--run-id", "d"],
                 home))
    s = json.loads((runs / "d" / "results" / "summary.json").read_text())
    _same_results(seq, s)
    assert _keys(runs / ".cache") == _keys(seq_root / ".cache")  # the same cache keys
    pids = {p["pid"] for p in s["placement"].values()}
    assert pids == {w.pid for w in cluster.workers}, (pids, [w.pid for w in cluster.workers])
    assert {p["runner"] for p in s["placement"].values()} == {"dask"}
    assert {"coco-eval-fp32-shard-0", "coco-eval-fp32-shard-1", "latency"} <= set(s["placement"])
    assert s["fp32"]["latency_measured"]["how"].startswith("latency step")
    assert _no_torn_entries(runs / ".cache") > 0


def test_a_worker_killed_in_the_middle_of_a_step_is_survived(sequential, cluster, home, tmp_path):
    """The last test of the module: it kills one of the cluster's two workers. Its run starts from a
    copy of the sequential run's cache without the evaluations, so calibration and PTQ come from the
    cache and the evaluation shards (where the fault point is) run on the workers."""
    seq_root, seq = sequential
    mark = cluster.mark
    runs = tmp_path / "runs"
    shutil.copytree(seq_root / ".cache", runs / ".cache",
                    ignore=lambda d, names: [n for n in names if Path(d) == seq_root / ".cache"
                                             and n in ("evaluate", "eval-shard", "eval-merge")])
    mark.unlink()  # armed: the first worker to reach the point pauses there
    p = _cli(["--runner", "dask", "--set", f"dask_address={cluster.address}", "--run-root", str(runs), "--run-id", "k"],
             home)
    deadline = time.time() + 300
    while not mark.exists() or not mark.read_text().strip():
        assert p.poll() is None, p.stderr.read()[-3000:]
        assert time.time() < deadline, "no worker reached the fault point"
        time.sleep(0.2)
    point, pid = mark.read_text().split()
    assert int(pid) in {w.pid for w in cluster.workers}
    os.kill(int(pid), signal.SIGKILL)  # detections computed, nothing cached yet: the step dies mid-way
    _finish(p)
    s = json.loads((runs / "k" / "results" / "summary.json").read_text())
    _same_results(seq, s)
    survivor = ({w.pid for w in cluster.workers} - {int(pid)}).pop()
    assert s["placement"]["latency"]["pid"] == survivor
    assert s["cached"]["quantize"] and not s["cached"]["fp32_eval"]  # the steps run were the evaluations
    assert _no_torn_entries(runs / ".cache") > 0
