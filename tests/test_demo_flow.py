"""The README's first command, as a user runs it: `python flows/int8.py --demo` (temporary Prefect server;
the run itself is conftest.py's session fixture demo_cli_run, which tests/test_dask.py compares with)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_demo_command_end_to_end(demo_cli_run):
    r, run, env = demo_cli_run["result"], demo_cli_run["run"], demo_cli_run["env"]
    assert f"run folder: {run}" in r.stdout
    assert "mAP50-95" in r.stdout and "fp32" in r.stdout and "int8" in r.stdout
    s = json.loads((run / "results" / "summary.json").read_text())
    assert s["model"]["output_format"] == "yolov10" and s["fp32"]["images"] == 100
    assert s["fp32"]["map50_95"] >= 0.60
    assert s["int8"]["detections"] > 0 and s["quantization"]["topk_kept_float"]
    assert s["calibration"]["count"] == 32 and s["gate"]["passed"]
    assert json.loads((run / "STATE.json").read_text())["state"] == "completed"
    # the Prefect home's missing parent was created (Prefect's temporary server alone would time out)
    assert Path(env["PREFECT_HOME"]).is_dir()
    # the console command runs the same flow: with the same run root (and so the same cache) its
    # table is the script's, line for line
    exe = Path(sys.executable).parent / "yolo-lowbit"
    r2 = subprocess.run([str(exe), "int8", "--demo", "--run-root", str(demo_cli_run["runs"]), "--run-id", "demo-cli"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r2.returncode == 0, r2.stderr[-4000:]

    def table(out: str) -> list[str]:  # the printed table: from its header to the run folder's line
        before = out.split("\nrun folder:")[0]
        return before[before.rindex("mAP50-95    mAP50"):].strip().splitlines()

    assert table(r2.stdout) == table(r.stdout) and len(table(r.stdout)) >= 3
