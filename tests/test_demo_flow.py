"""The README's first command, as a user runs it: `python flows/int8.py --demo` (temporary Prefect server)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_demo_command_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # A Prefect home whose parent does not exist yet: the CLI creates it (Prefect's temporary server
    # alone would time out).
    env.update(PREFECT_HOME=str(tmp_path / "new" / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1")
    r = subprocess.run([sys.executable, "flows/int8.py", "--demo", "--run-root", str(tmp_path / "runs"),
                        "--run-id", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    run = tmp_path / "runs" / "demo"
    assert f"run folder: {run}" in r.stdout
    assert "mAP50-95" in r.stdout and "fp32" in r.stdout and "int8" in r.stdout
    s = json.loads((run / "results" / "summary.json").read_text())
    assert s["model"]["output_format"] == "yolov10" and s["fp32"]["images"] == 100
    assert s["fp32"]["map50_95"] >= 0.60
    assert s["int8"]["detections"] > 0 and s["quantization"]["topk_kept_float"]
    assert s["calibration"]["count"] == 32 and s["gate"]["passed"]
    assert json.loads((run / "STATE.json").read_text())["state"] == "completed"
    # the console command runs the same flow: with the same run root (and so the same cache) its
    # table is the script's, line for line
    exe = Path(sys.executable).parent / "yolo-lowbit"
    r2 = subprocess.run([str(exe), "int8", "--demo", "--run-root", str(tmp_path / "runs"), "--run-id", "demo-cli"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r2.returncode == 0, r2.stderr[-4000:]

    def table(out: str) -> list[str]:  # the printed table: from its header to the run folder's line
        before = out.split("\nrun folder:")[0]
        return before[before.rindex("mAP50-95    mAP50"):].strip().splitlines()

    assert table(r2.stdout) == table(r.stdout) and len(table(r.stdout)) >= 3
