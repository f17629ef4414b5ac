"""Faults injected for real: SIGKILL at a chosen step, two runs at once, bytes cut from the cache."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from tasks.run.rundir import read_run_state

pytestmark = pytest.mark.slow

RUNNER = """
import json, sys
sys.path.insert(0, {root!r})
from tasks.config import RunConfig
from tasks.pipeline import run_int8
cfg = RunConfig.model_validate(json.loads(sys.argv[1]))
s = run_int8(cfg)
print(json.dumps(s["cached"]))
"""


def _cfg(tmp_path, tiny_model, tiny_data, run_id):
    return {"model": str(tiny_model), "images": str(tiny_data["images"]), "annotations": str(tiny_data["annotations"]),
            "calib_images": str(tiny_data["calib_images"]), "calib_count": 6, "run_root": str(tmp_path / "runs"),
            "run_id": run_id, "eval": {"providers": ["cpu"], "warmup": 1}, "smoke_samples": 2}


def _start(cfg, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-c", RUNNER.format(root=str(ROOT)), json.dumps(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _kill_at(cfg, point, tmp_path):
    mark = tmp_path / f"mark-{point}"
    p = _start(cfg, {"YOLO_LOWBIT_FAULT_PAUSE": point, "YOLO_LOWBIT_FAULT_MARK": str(mark)})
    deadline = time.time() + 240
    while not mark.exists():
        assert p.poll() is None, p.stderr.read()
        assert time.time() < deadline, "the run never reached the fault point"
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)


def _no_partial_files(run_dir: Path):
    leftovers = [p for p in run_dir.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
    assert not leftovers or all(p.name.startswith(".") for p in leftovers)


def test_sigkill_during_ptq_then_rerun_finishes(tmp_path, tiny_model, tiny_data):
    _kill_at(_cfg(tmp_path, tiny_model, tiny_data, "killed"), "ptq-written", tmp_path)
    dead = tmp_path / "runs" / "killed"
    assert not (dead / "onnx" / "tiny-int8-qdq.onnx").exists()  # ModelOpt's output never got its final name
    assert not (dead / "results" / "summary.json").exists()
    assert read_run_state(dead)["state"] == "dead"  # not mistaken for running, nor for completed
    assert not list((tmp_path / "runs" / ".cache").glob("quantize/*/MANIFEST.json"))
    r = subprocess.run([sys.executable, "-c", RUNNER.format(root=str(ROOT)),
                        json.dumps(_cfg(tmp_path, tiny_model, tiny_data, "resumed"))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    cached = json.loads(r.stdout.strip().splitlines()[-1])
    assert cached == {"calibration": True, "quantize": False, "fp32_eval": False, "int8_eval": False}
    assert read_run_state(tmp_path / "runs" / "resumed")["state"] == "completed"


def test_sigkill_during_int8_eval_then_rerun_reuses_finished_steps(tmp_path, tiny_model, tiny_data):
    _kill_at(_cfg(tmp_path, tiny_model, tiny_data, "killed"), "int8-eval-computed", tmp_path)
    dead = tmp_path / "runs" / "killed"
    assert (dead / "fp32-coco" / "metrics.json").is_file()
    assert not (dead / "int8-coco" / "metrics.json").exists()
    assert not (dead / "results" / "summary.json").exists()
    _no_partial_files(dead)
    r = subprocess.run([sys.executable, "-c", RUNNER.format(root=str(ROOT)),
                        json.dumps(_cfg(tmp_path, tiny_model, tiny_data, "resumed"))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {
        "calibration": True, "quantize": True, "fp32_eval": True, "int8_eval": False}


def test_two_runs_at_once_on_one_run_root(tmp_path, tiny_model, tiny_data):
    procs = [_start(_cfg(tmp_path, tiny_model, tiny_data, f"run{i}")) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    sums = [json.loads((tmp_path / "runs" / f"run{i}" / "results" / "summary.json").read_text()) for i in range(2)]
    assert sums[0]["quantization"]["sha256"] == sums[1]["quantization"]["sha256"]
    assert sums[0]["run_dir"] != sums[1]["run_dir"]
    from tasks.run.cache import StepCache

    cache = StepCache(tmp_path / "runs" / ".cache")
    for man in (tmp_path / "runs" / ".cache").glob("*/*/MANIFEST.json"):
        step, key = man.parent.parent.name, man.parent.name
        assert cache.get(step, key) is not None, f"torn entry {step}/{key}"
    assert not cache.corrupt
    assert not list((tmp_path / "runs" / ".cache").glob("*/.tmp-*"))


def test_truncated_cached_model_is_detected_and_recomputed(tmp_path, tiny_model, tiny_data):
    from tasks.config import RunConfig
    from tasks.run.rundir import sha256_file
    from tasks.pipeline import run_int8

    s1 = run_int8(RunConfig.model_validate(_cfg(tmp_path, tiny_model, tiny_data, "a")))
    # the cache also holds ModelOpt's max model that the default mse ranges start from: damage the published one
    [entry] = [p.with_name("model.onnx")
               for p in (tmp_path / "runs" / ".cache" / "quantize").glob("*/mse-calibration.cache")]
    os.truncate(entry, entry.stat().st_size // 2)
    s2 = run_int8(RunConfig.model_validate(_cfg(tmp_path, tiny_model, tiny_data, "b")))
    assert not s2["cached"]["quantize"] and s2["cached"]["calibration"]
    assert any("model.onnx" in c for c in s2["cache_corrupt_entries"])
    assert s2["quantization"]["sha256"] == s1["quantization"]["sha256"]  # recomputed to the same bytes
    # the first run's artifact was a copy, untouched by the damage to the cache
    assert sha256_file(tmp_path / "runs" / "a" / "onnx" / "tiny-int8-qdq.onnx") == s1["quantization"]["sha256"]
