from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from procs import prefect_env  # noqa: E402  (tests/ is on the path from here)

SHARED = ROOT.parent / "shared"


def shared_path(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"{p} is absent: real-data checks need ../shared next to the repo (CI has it)")
    return p


@pytest.fixture
def tiny_model(tmp_path):
    from tiny import tiny_detector

    return tiny_detector(tmp_path / "models" / "tiny.onnx")


@pytest.fixture
def tiny_data(tmp_path):
    from tiny import tiny_coco, tiny_images

    images, ann = tiny_coco(tmp_path / "coco", n=6)
    calib = tmp_path / "calib"
    tiny_images(calib, 8, seed=1, prefix="cal")
    return {"images": images, "annotations": ann, "calib_images": calib}


@pytest.fixture(scope="session")
def demo_cli_run(tmp_path_factory):
    """The README's first command as a user runs it, once per test session: `python flows/int8.py --demo`
    in a fresh process with a temporary Prefect server and a Prefect home whose parent does not exist
    yet. tests/test_demo_flow.py checks its output; tests/test_dask.py compares its runs with it (the
    same demo, run sequentially). Under pytest-xdist every worker has its own session: the first to
    arrive runs the command, the others wait on the lock and read what it wrote (xdist's recipe for a
    session fixture that runs once)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the folder all workers' base temps share
    tmp = base / "demo-cli"
    env = prefect_env(tmp / "new" / "prefect-home")
    done = tmp / "completed.json"
    with open(base / "demo-cli.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            tmp.mkdir(exist_ok=True)
            r = subprocess.run([sys.executable, "flows/int8.py", "--demo", "--run-root", str(tmp / "runs"),
                                "--run-id", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
            if r.returncode == 0:
                # the home as the run left it, its database created and migrated: a temporary server
                # started on a copy skips the migration (about 10 s of one core per run here)
                shutil.copytree(env["PREFECT_HOME"], tmp / "prefect-home-after")
            part = done.with_suffix(".part")
            part.write_text(json.dumps({"returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr}))
            part.rename(done)
        r = subprocess.CompletedProcess(**{"args": "flows/int8.py --demo", **json.loads(done.read_text())})
    assert r.returncode == 0, r.stderr[-4000:]
    return {"result": r, "runs": tmp / "runs", "run": tmp / "runs" / "demo", "env": env,
            "home_after": tmp / "prefect-home-after"}
