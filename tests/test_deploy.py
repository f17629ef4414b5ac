"""A real Prefect server on loopback: work pool, `prefect deploy` from prefect.yaml, a worker, the demo
deployment triggered through the API, its artifacts read back, the UI rendered by headless Chromium.

Every process started here is stopped at the end (process groups, terminated then killed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from conftest import ROOT
from procs import free_port, prefect_env, stop_all

pytestmark = pytest.mark.slow

FLOW = "yolo-int8"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    logs = tmp_path_factory.mktemp("logs")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(home, PREFECT_API_URL=api, PREFECT_WORKER_QUERY_SECONDS="2",
                      PREFECT_WORKER_PREFETCH_SECONDS="2", PYTHONUNBUFFERED="1")
    prefect = [sys.executable, "-m", "prefect"]
    procs: list[subprocess.Popen] = []

    def start(args, name):
        f = open(logs / f"{name}.log", "w")
        p = subprocess.Popen(prefect + args, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
        procs.append(p)
        return p

    try:
        server = start(["server", "start", "--host", "127.0.0.1", "--port", str(port)], "server")
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, (logs / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "the Prefect server did not come up"
            time.sleep(0.5)

        def cli(*args):
            r = subprocess.run(prefect + list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
            assert r.returncode == 0, f"prefect {' '.join(args)}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
            return r.stdout

        cli("work-pool", "create", "yolo-lowbit", "--type", "process", "--overwrite")
        cli("work-pool", "create", "yolo-lowbit-sweeps", "--type", "process", "--overwrite")
        cli("--no-prompt", "deploy", "--all")
        # two workers taking one flow run at a time each (a sweep's children must spread over both),
        # and the sweeps' own worker
        workers = [start(["worker", "start", "--pool", "yolo-lowbit", "--limit", "1", "--name", f"w{i}"], f"worker{i}")
                   for i in range(2)]
        start(["worker", "start", "--pool", "yolo-lowbit-sweeps", "--name", "sweeps"], "worker-sweeps")
        yield {"api": api, "port": port, "env": env, "logs": logs, "worker_pids": [w.pid for w in workers]}
    finally:
        stop_all(procs[1:])  # the workers together, then the server they report to
        stop_all(procs[:1])


def _api(method: str, url: str, **kw) -> httpx.Response:
    """One API call, retried on 5xx and dropped connections as Prefect's own client does (a SQLite-backed
    server answers 503 while its database is busy with a flow run's writes)."""
    for attempt in range(15):
        try:
            r = httpx.request(method, url, timeout=15, **kw)
            if r.status_code < 500:
                r.raise_for_status()
                return r
        except httpx.TransportError:
            pass
        time.sleep(min(0.5 * (attempt + 1), 3))
    r.raise_for_status()
    return r


def _deployment(api: str, name: str) -> dict:
    return _api("GET", f"{api}/deployments/name/{FLOW}/{name}").json()


def _run(api: str, deployment: str, parameters: dict, timeout: float = 420) -> dict:
    dep = _deployment(api, deployment)
    run_id = _api("POST", f"{api}/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters}).json()["id"]
    deadline = time.time() + timeout
    while time.time() < deadline:
        fr = _api("GET", f"{api}/flow_runs/{run_id}").json()
        if fr["state"]["type"] in TERMINAL:
            return fr
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} did not finish in {timeout} s (state {fr['state']})")


def _artifacts(api: str, run_id: str) -> list[dict]:
    return _api("POST", f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_deploy_trigger_cache_gate_and_ui(stack, tmp_path):
    api = stack["api"]
    runs = tmp_path / "runs"

    # The scheduled re-quantization exists with its cron and timezone.
    nightly = _deployment(api, "yolov10m-int8-nightly")
    sched = nightly["schedules"][0]["schedule"]
    assert sched["cron"] == "30 2 * * *" and sched["timezone"] == "Europe/Berlin"
    assert nightly["enforce_parameter_schema"] is True
    assert "config" in nightly["parameter_openapi_schema"]["properties"]
    # Deployed the plain way (no YOLO_LOWBIT_ROOT, no make): workers run from the folder deployed from.
    pull = _deployment(api, "demo-int8")["pull_steps"]
    assert pull == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT.resolve())}}]

    params = {"config": {"demo": True, "run_root": str(runs), "run_id": "first"}}
    fr = _run(api, "demo-int8", params)
    assert fr["state"]["type"] == "COMPLETED", (stack["logs"] / "worker0.log").read_text()[-4000:]
    summary = json.loads((runs / "first" / "results" / "summary.json").read_text())
    assert summary["fp32"]["map50_95"] > 0.5 and summary["int8"]["detections"] > 0
    arts = _artifacts(api, fr["id"])
    kinds = {a["type"]: a for a in arts}
    assert {"markdown", "table", "progress"} <= set(kinds)
    # Every long loop (calibration images and passes, each evaluation) left a progress artifact at 100%.
    progress = {a["description"].split(":")[0]: a["data"] for a in arts if a["type"] == "progress"}
    assert {"calibration images", "calibrate tensorrt (max)", "evaluate fp32", "evaluate int8"} <= set(progress), progress
    assert all(float(v) == 100.0 for v in progress.values()), progress
    assert f"{summary['fp32']['map50_95']:.4f}" in kinds["markdown"]["data"]
    table = kinds["table"]["data"]
    table = json.loads(table) if isinstance(table, str) else table
    assert {row["model"] for row in table} == {"fp32", "int8"}
    assert any(abs(row["map50_95"] - summary["int8"]["map50_95"]) < 1e-9 for row in table)

    # Same parameters again: every step from the cache.
    fr2 = _run(api, "demo-int8", {"config": {**params["config"], "run_id": "second"}})
    assert fr2["state"]["type"] == "COMPLETED"
    s2 = json.loads((runs / "second" / "results" / "summary.json").read_text())
    assert all(s2["cached"].values()), s2["cached"]

    # A budget the demo cannot meet: Failed, with the figures in the message, report still written.
    fr3 = _run(api, "demo-int8", {"config": {**params["config"], "run_id": "gated", "max_map_drop": -50}})
    assert fr3["state"]["type"] == "FAILED"
    assert "over the budget of -50 points" in fr3["state"]["message"]
    assert (runs / "gated" / "results" / "report.md").is_file()
    assert _artifacts(api, fr3["id"])

    # The UI shows the run: its name and the report's figures (logged by the flow) in the rendered page.
    browser = _chromium()
    if browser is None:
        pytest.skip("Debian's chromium is not installed (make test installs it when run as root)")
    url = f"http://127.0.0.1:{stack['port']}/runs/flow-run/{fr['id']}"
    shot = ROOT / "tmp" / "test-artifacts" / "flow-run-page.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-quic",
             f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=20000",
             "--window-size=1600,1400"]
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    subprocess.run([browser, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert fr["name"] in dom, dom[-2000:]
    assert f"{summary['fp32']['map50_95']:.4f}" in dom
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_demo_sweep_spreads_its_children_over_both_workers(stack, tmp_path):
    """The demo-sweep deployment as a user triggers it: its two children (demo-int8 runs) run at once,
    one on each worker, share one cache (one entry per key), and the comparison comes back."""
    api = stack["api"]
    dep = _api("GET", f"{api}/deployments/name/yolo-sweep/demo-sweep").json()
    # the deployment's own children, with their run folders (and shared cache) in a fresh place
    sweep = {**dep["parameters"]["sweep"], "run_root": str(tmp_path / "sweeps")}
    run_id = _api("POST", f"{api}/deployments/{dep['id']}/create_flow_run",
                  json={"parameters": {"sweep": sweep}}).json()["id"]
    deadline = time.time() + 600
    while True:
        fr = _api("GET", f"{api}/flow_runs/{run_id}").json()
        if fr["state"]["type"] in TERMINAL:
            break
        assert time.time() < deadline, "the sweep did not finish"
        time.sleep(1)
    logs = "\n".join((stack["logs"] / f"{n}.log").read_text()[-3000:] for n in ("worker-sweeps", "worker0", "worker1"))
    assert fr["state"]["type"] == "COMPLETED", logs
    sweep_id = fr["name"]
    root = tmp_path / "sweeps"
    summaries = {name: json.loads((root / f"{sweep_id}-{name}" / "results" / "summary.json").read_text())
                 for name in ("tensorrt", "ort-cpu")}
    # each child's steps ran in a flow-run process started by one of the two workers: both took one
    parents = {name: {p["ppid"] for p in s["placement"].values()} for name, s in summaries.items()}
    assert all(len(v) == 1 for v in parents.values()), parents
    assert {v.pop() for v in parents.values()} == set(stack["worker_pids"])
    assert summaries["tensorrt"]["quantization"]["target"] == "tensorrt"
    assert summaries["ort-cpu"]["quantization"]["target"] == "ort-cpu"
    # one cache entry per key: the calibration both children computed at once is stored once
    cache = root / ".cache"
    for step in ("calibration", "evaluate"):
        entries = [d for d in (cache / step).iterdir() if not d.name.startswith(".")]
        assert entries and all((d / "MANIFEST.json").is_file() for d in entries)
    calib_keys = {s["calibration"]["sha256"] for s in summaries.values()}
    assert len(calib_keys) == 1
    assert len([d for d in (cache / "calibration").iterdir() if not d.name.startswith(".")]) == 1
    arts = _artifacts(api, run_id)
    table = next(a for a in arts if a["type"] == "markdown")["data"]
    assert "| tensorrt |" in table and "| ort-cpu |" in table
