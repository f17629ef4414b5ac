"""The INT8 flow end to end on a tiny graph, under a real (temporary) Prefect backend."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tasks.quantization.calibration import CalibrationError
from tasks.config import RunConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def _cfg(tmp_path, model, data, **kw):
    base = dict(model=model, images=data["images"], annotations=data["annotations"],
                calib_images=data["calib_images"], calib_count=6, run_root=tmp_path / "runs",
                eval={"providers": ["cpu"], "warmup": 1}, smoke_samples=2)
    base.update(kw)
    return RunConfig.model_validate(base)


def _nudge_weight(src: Path, dst: Path) -> Path:
    """Change one weight value: a model that differs in its bytes, nothing else."""
    m = onnx.load(str(src))
    for i, init in enumerate(m.graph.initializer):
        if init.name == "w2":
            a = numpy_helper.to_array(init).copy()
            a[0, 0] += 1e-3
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(a, "w2"))
    onnx.save(m, str(dst))
    return dst


def test_flow_end_to_end_cache_hits_and_misses(harness, tmp_path, tiny_model, tiny_data):
    from flows.int8_flow import int8_flow

    s1 = int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="first"))
    run = Path(s1["run_dir"])
    assert run.name == "first"
    for rel in ("onnx/tiny-int8-qdq.onnx", "quantize-int8/config.json", "quantize-int8/modelopt-onnx-ptq.log",
                "quantize-int8/qdq-summary.json", "quantize-int8/calibration.json", "fp32-coco/metrics.json",
                "int8-coco/metrics.json", "results/summary.json", "results/report.md"):
        assert (run / rel).is_file(), rel
    assert json.loads((run / "STATE.json").read_text())["state"] == "completed"
    on_disk = json.loads((run / "results" / "summary.json").read_text())
    assert on_disk["run_id"] == "first" and on_disk["delta"] == s1["delta"]
    assert s1["cached"] == {"calibration": False, "quantize": False, "fp32_eval": False, "int8_eval": False}
    assert s1["fp32"]["map50"] == pytest.approx(1.0)
    assert 0.0 <= s1["int8"]["map50_95"] <= 1.0 and s1["int8"]["images"] == 6
    assert s1["delta"]["map50_95"] == pytest.approx(s1["int8"]["map50_95"] - s1["fp32"]["map50_95"], abs=1e-6)
    assert s1["quantization"]["method"] == "mse" and s1["quantization"]["qdq_nodes"] > 0
    assert s1["quantization"]["topk_kept_float"] and "TopK" in s1["quantization"]["excluded_op_types"]
    assert s1["calibration"]["count"] == 6 and len(s1["calibration"]["sha256"]) == 64
    cfg_snap = json.loads((run / "quantize-int8" / "config.json").read_text())
    assert cfg_snap["versions"]["nvidia-modelopt"] and cfg_snap["inputs"]["model"]["sha256"] == s1["model"]["sha256"]
    assert "# INT8 report" in (run / "results" / "report.md").read_text()

    # Same inputs, new run: everything from the cache, and a complete folder of its own.
    s2 = int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="second"))
    assert all(s2["cached"].values()), s2["cached"]
    assert (Path(s2["run_dir"]) / "onnx" / "tiny-int8-qdq.onnx").is_file()
    assert s2["int8"]["map50_95"] == s1["int8"]["map50_95"] and s2["quantization"]["sha256"] == s1["quantization"]["sha256"]

    # One weight changed: calibration (images only) is reused, everything after it is recomputed.
    changed = _nudge_weight(tiny_model, tmp_path / "models" / "tiny.onnx.new")
    changed = changed.rename(tmp_path / "models" / "tiny2.onnx")
    s3 = int8_flow(config=_cfg(tmp_path, changed, tiny_data, run_id="third"))
    assert s3["cached"] == {"calibration": True, "quantize": False, "fp32_eval": False, "int8_eval": False}

    # A setting changed: only quantization and the INT8 evaluation re-run.
    s4 = int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="fourth", quant={"method": "entropy"}))
    assert s4["cached"] == {"calibration": True, "quantize": False, "fp32_eval": True, "int8_eval": s4["cached"]["int8_eval"]}
    assert s4["quantization"]["method"] == "entropy"


def test_flow_calibration_tensor_byte_change_requantizes(harness, tmp_path, tiny_model, tiny_data):
    from flows.int8_flow import int8_flow

    cal = np.random.default_rng(0).random((4, 3, 64, 64), dtype=np.float32)
    p = tmp_path / "calib.npy"
    np.save(p, cal)
    kw = dict(calib_images=None, calib=p)
    s1 = int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="t1", **kw))
    assert s1["calibration"]["source"] == "tensor" and not s1["cached"]["quantize"]
    s2 = int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="t2", **kw))
    assert s2["cached"]["quantize"] and s2["cached"]["fp32_eval"]
    cal[3, 2, 10, 10] = 0.123  # one value, four bytes
    np.save(p, cal)
    s3 = int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="t3", **kw))
    assert not s3["cached"]["quantize"] and s3["cached"]["fp32_eval"]
    assert s3["calibration"]["sha256"] != s1["calibration"]["sha256"]


def test_bad_calibration_is_refused_by_the_first_step_before_any_run_folder(harness, tmp_path, tiny_model, tiny_data):
    """A deployment's parameters reach the flow unchecked: its first step checks the calibration
    tensor's values (a 0-255 tensor) before a run folder exists, and does not retry bad input."""
    from flows.int8_flow import int8_flow

    p = tmp_path / "bad.npy"
    np.save(p, np.full((2, 3, 64, 64), 200.0, np.float32))
    with pytest.raises(CalibrationError, match="un-normalised"):
        int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="bad", calib_images=None, calib=p))
    assert not (tmp_path / "runs" / "bad").exists()


def test_artifacts_are_published(harness, tmp_path, tiny_model, tiny_data):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.int8_flow import int8_flow

    int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="art"))

    async def read():
        async with get_client() as c:
            return await c.read_artifacts()

    arts = asyncio.run(read())
    kinds = {(a.key, a.type) for a in arts}
    assert ("int8-tiny-report", "markdown") in kinds and ("int8-tiny-metrics", "table") in kinds
    # The long loops' progress artifacts, each at 100% when its loop ended.
    progress = {a.description.split(":")[0]: a.data for a in arts if a.type == "progress"}
    assert {"calibration images", "evaluate fp32", "evaluate int8"} <= set(progress), progress
    assert all(float(v) == 100.0 for v in progress.values()), progress

    # The tensorrt artifact stores INT8 weights behind their DequantizeLinear (dq_only, the default).
    q = onnx.load(str(tmp_path / "runs" / "art" / "onnx" / "tiny-int8-qdq.onnx"))
    inits = {i.name: i for i in q.graph.initializer}
    weight_dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert weight_dqs and all(inits[n.input[0]].data_type == onnx.TensorProto.INT8 for n in weight_dqs)
    assert not [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inits]


def test_regression_gate_fails_the_run_but_keeps_report_and_artifacts(harness, tmp_path, tiny_model, tiny_data):
    from flows.int8_flow import int8_flow
    from tasks.pipeline import RegressionGateError

    with pytest.raises(RegressionGateError, match=r"over the budget of -50 points"):
        int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="gated", max_map_drop=-50))
    run = tmp_path / "runs" / "gated"
    s = json.loads((run / "results" / "summary.json").read_text())
    assert s["gate"]["passed"] is False and s["gate"]["budget_points"] == -50
    assert "Regression gate: FAILED" in (run / "results" / "report.md").read_text()
    assert json.loads((run / "STATE.json").read_text())["state"] == "failed"


def test_gate_flags_a_model_without_detections():
    from tasks.steps.report import regression_gate

    s = {"delta": {"map50_95": 0.0}, "int8": {"detections": 0, "images": 5, "map50_95": 0.0},
         "fp32": {"map50_95": 0.0}}
    g = regression_gate(s, 1.0)
    assert not g["passed"] and "no detections" in g["message"]
    s = {"delta": {"map50_95": -0.004}, "int8": {"detections": 9, "images": 5, "map50_95": 0.5},
         "fp32": {"map50_95": 0.504}}
    assert regression_gate(s, 0.5)["passed"] and not regression_gate(s, 0.3)["passed"]
    assert regression_gate(s, None)["passed"]
    # several targets: each one is held to the budget, and the failing one is named
    s["targets"] = {"tensorrt": {k: s[k] for k in ("delta", "int8")},
                    "ort-cpu": {"delta": {"map50_95": -0.02}, "int8": {"detections": 9, "images": 5, "map50_95": 0.484}}}
    g = regression_gate(s, 1.0)
    assert not g["passed"] and "INT8 (ort-cpu)" in g["message"] and "tensorrt" not in g["message"]
    assert g["drop_points_by_target"] == {"tensorrt": 0.4, "ort-cpu": 2.0}


def test_flow_targets_side_by_side_and_alone(harness, tmp_path, tiny_model, tiny_data):
    from flows.int8_flow import int8_flow

    every = ["tensorrt", "ort-cpu", "openvino"]
    s = int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="both", targets=every))
    run = Path(s["run_dir"])
    for rel in ("onnx/tiny-int8-qdq.onnx", "onnx/tiny-int8-ort-cpu.onnx", "quantize-int8-ort-cpu/config.json",
                "quantize-int8-ort-cpu/smoke.json", "int8-ort-cpu-coco/metrics.json", "int8-coco/metrics.json",
                "openvino/tiny-int8-openvino.xml", "openvino/tiny-int8-openvino.bin",
                "quantize-int8-openvino/config.json", "quantize-int8-openvino/smoke.json",
                "int8-openvino-coco/metrics.json"):
        assert (run / rel).is_file(), rel
    assert list(s["targets"]) == every
    ov = s["targets"]["openvino"]
    assert ov["quantization"]["artifact"] == str(run / "openvino" / "tiny-int8-openvino.xml")
    assert ov["int8"]["provider"] == "OpenVINO CPU" and ov["int8"]["images"] == 6
    ov_metrics = json.loads((run / "int8-openvino-coco" / "metrics.json").read_text())
    assert ov_metrics["runtime"]["runtime"] == "openvino" and ov_metrics["model"]["path"].endswith(".xml")
    assert json.loads((run / "quantize-int8-openvino" / "smoke.json").read_text())["runtime"] == "openvino"
    assert s["quantization"]["target"] == "tensorrt" and s["int8"] == s["targets"]["tensorrt"]["int8"]
    oc = s["targets"]["ort-cpu"]
    assert oc["quantization"]["tool"] == "onnxruntime.quantization.quantize_static"
    assert oc["quantization"]["ort_cpu_kernels"]["QLinearConv"] >= 1 and oc["int8"]["images"] == 6
    assert oc["delta"]["latency_ratio"] > 0 and set(s["gate"]["drop_points_by_target"]) == set(every)
    md = (run / "results" / "report.md").read_text()
    assert "INT8 ort-cpu" in md and "QLinearConv" in md and "INT8 openvino" in md and "OpenVINO's CPU plugin" in md
    # every latency twice: the evaluator's session and a deployed one, each saying which it is
    assert "latency p50, deployed session" in md and s["fp32"]["latency_deployed_ms"]["n"] > 0
    assert ov["int8"]["latency_deployed_session"].startswith("deployed:") and ov["int8"]["runtime"]["name"] == "openvino"
    assert ov["int8"]["runtime"]["version"] and ov["int8"]["runtime"]["cpu"]
    again = int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="both-again", targets=every))
    assert all(again["cached"].values()), again["cached"]

    alone = int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="alone", targets=["ort-cpu"]))
    assert "targets" not in alone and alone["quantization"]["target"] == "ort-cpu"
    assert alone["int8"]["map50_95"] == oc["int8"]["map50_95"] and alone["cached"]["quantize"]
    assert set(alone["delta"]) == {"map50_95", "map50", "latency_ratio", "map50_95_ci", "map50_ci", "bootstrap"}
    lo, hi = alone["delta"]["map50_95_ci"]  # paired with FP32 on the same resamples
    assert lo <= alone["delta"]["map50_95"] <= hi and alone["delta"]["bootstrap"]["resamples"] == 1000


def test_gate_off_says_so_in_the_report_and_the_console():
    from tasks.steps.report import console_table, regression_gate

    side = {"map50_95": 0.50, "map50": 0.65, "latency_ms": {"p50": 10.0, "p90": 11.0, "mean": 10.0},
            "provider": "CPUExecutionProvider", "images": 79, "detections": 100}
    s = {"run_id": "r", "run_dir": "/tmp/r", "model": {"path": "m.onnx", "size_bytes": 1}, "fp32": side,
         "int8": {**side, "map50_95": 0.4851}, "delta": {"map50_95": -0.0149, "map50": -0.01, "latency_ratio": 0.5},
         "quantization": {"target": "ort-cpu"}}
    off = regression_gate(s, None)
    assert off["passed"] and off["off"] and off["message"] == "gate off: drop 1.49 points"
    on = regression_gate(s, 2.0)
    assert on["passed"] and not on["off"] and "within budget" in on["message"]
    assert not regression_gate(s, 1.0)["passed"]
    s["gate"] = off
    assert console_table(s).splitlines()[-1] == "regression gate: off - gate off: drop 1.49 points"


def test_process_runner_runs_steps_side_by_side_with_the_sequential_figures(harness, tmp_path, tiny_model, tiny_data):
    """--runner process: Prefect's process pool, two workers; evaluation in shards, latency in a step
    of its own; the figures and models of the sequential run, each step placed on a worker process."""
    import os

    from flows.int8_flow import int8_flow

    seq = int8_flow(config=_cfg(tmp_path / "a", tiny_model, tiny_data, run_id="seq"))
    par = int8_flow(config=_cfg(tmp_path / "b", tiny_model, tiny_data, run_id="par", runner="process", workers=2))
    assert par["fp32"]["map50_95"] == seq["fp32"]["map50_95"] and par["int8"]["map50_95"] == seq["int8"]["map50_95"]
    assert par["quantization"]["sha256"] == seq["quantization"]["sha256"]
    assert par["runner"] == "process" and par["workers"] == 2
    pids = {p["pid"] for p in par["placement"].values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert {"coco-eval-fp32-shard-0", "coco-eval-fp32-shard-1", "coco-eval-int8", "latency"} <= set(par["placement"])
    assert par["fp32"]["latency_measured"]["images"] == 6
    assert {p["pid"] for p in seq["placement"].values()} == {os.getpid()}  # sequential: in the flow's process
    report = (tmp_path / "b" / "runs" / "par" / "results" / "report.md").read_text()
    assert "## Where each step ran" in report and "latency measured in its own step" in report


def test_auto_mode_on_workers_chooses_what_the_sequential_run_chooses(harness, tmp_path, tiny_data):
    """--runner process with --accuracy-budget: the guard decides in the flow's process and sends each
    candidate's steps to the workers, each evaluation in shards; its choice and figures are the
    sequential run's, and the candidates' steps appear in the placement."""
    from tiny import fragile_detector

    from flows.int8_flow import int8_flow

    fragile = fragile_detector(tmp_path / "fragile.onnx")
    extra = dict(calib_count=8, accuracy_budget=0.5, max_map_drop=None, targets=["tensorrt"],
                 eval={"providers": ["cpu"], "warmup": 1, "class_map": [7, 7]},
                 guard_min_mac_share=0.5)
    seq = int8_flow(config=_cfg(tmp_path / "a", fragile, tiny_data, run_id="seq", **extra))
    par = int8_flow(config=_cfg(tmp_path / "b", fragile, tiny_data, run_id="par", runner="process", **extra))
    gs, gp = seq["accuracy_guard"], par["accuracy_guard"]
    assert gp["met"] and gp["chosen"]["float_layers"] == gs["chosen"]["float_layers"] == ["/model.24/m/Conv"]
    assert [c["name"] for c in gp["candidates"]] == [c["name"] for c in gs["candidates"]]
    assert par["int8"]["map50_95"] == seq["int8"]["map50_95"] and par["quantization"]["sha256"] == seq["quantization"]["sha256"]
    guard_steps = [k for k in par["placement"] if k.startswith("accuracy-guard")]
    assert any("shard-1" in k for k in guard_steps) and any(k.endswith("-recover") for k in guard_steps)
    run = tmp_path / "b" / "runs" / "par"
    published = json.loads((run / "int8-coco" / "metrics.json").read_text())
    assert published["map50_95"] == par["int8"]["map50_95"]  # the chosen candidate's, not the last probed


def test_auto_mode_tries_reconstruction_before_any_layer_in_float(harness, tmp_path, tiny_data):
    """--reconstruct auto with a budget the plain model misses: the guard's next candidate is the
    reconstructed plain model, tried before the per-layer search."""
    from tiny import fragile_detector

    from flows.int8_flow import int8_flow

    fragile = fragile_detector(tmp_path / "fragile.onnx")
    s = int8_flow(config=_cfg(tmp_path, fragile, tiny_data, run_id="auto-rec", calib_count=8, accuracy_budget=0.5,
                              max_map_drop=None, targets=["tensorrt"], guard_min_mac_share=0.5,
                              eval={"providers": ["cpu"], "warmup": 1, "class_map": [7, 7]},
                              reconstruction={"mode": "auto", "samples": 4, "iters": 10, "batch": 2, "crop": 32}))
    names = [c["name"] for c in s["accuracy_guard"]["candidates"]]
    assert names[0].startswith("plain-") and any(n.endswith("-reconstruct") for n in names), names
    rec = next(i for i, n in enumerate(names) if n.endswith("-reconstruct"))
    assert all("float" not in n for n in names[:rec + 1])


def test_cache_damage_found_inside_a_worker_reaches_the_summary(harness, tmp_path, tiny_model, tiny_data):
    """A worker's StepCache is a copy: the damaged entry it sets aside must still be reported."""
    from flows.int8_flow import int8_flow

    int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="one", runner="process"))
    shard = next(p for p in (tmp_path / "runs" / ".cache" / "eval-shard").iterdir() if not p.name.startswith("."))
    (shard / "detections.json").write_text("[]")  # bytes changed behind the manifest's back
    s = int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="two", runner="process"))
    assert any(d.startswith(f"eval-shard/{shard.name[:12]}") for d in s["cache_corrupt_entries"]), s["cache_corrupt_entries"]
    assert "damaged cache entries recomputed: 1" in (tmp_path / "runs" / "two" / "results" / "report.md").read_text()


def test_reconstruction_is_a_step_of_the_flow_published_recorded_and_cached(harness, tmp_path, tiny_model, tiny_data):
    """--reconstruct on: tensorrt and ort-cpu ship their recovered model with learned int8 weights
    (same scales and Q/DQ placement), the run records what it cost, openvino says it is not
    reconstructed, and a second run takes the learned model from the cache."""
    from flows.int8_flow import int8_flow
    from tasks.quantization.torch_graph import quant_weights

    rec = {"mode": "on", "samples": 4, "iters": 20, "batch": 2, "crop": 32, "convs_per_block": 1}
    targets = ["tensorrt", "ort-cpu", "openvino"]
    s1 = int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="r1", targets=targets, reconstruction=rec,
                               max_map_drop=None))
    run = Path(s1["run_dir"])
    fp32 = onnx.load(str(tiny_model))
    for t in ("tensorrt", "ort-cpu"):
        q = s1["targets"][t]["quantization"]
        r = q["reconstruction"]
        assert r["samples"] == 4 and r["iters"] == 20 and r["wall_s"] > 0 and r["weights"] > 0
        conf = json.loads((run / f"quantize-int8{'' if t == 'tensorrt' else '-' + t}" / "config.json").read_text())
        shipped = onnx.load(q["artifact"])
        # the shipped model is the learned one; its weights on the unchanged scales of the recovered model
        assert conf["output_sha256"] == q["sha256"] != conf["unreconstructed_sha256"] or r["weights_changed"] == 0
        for w in quant_weights(shipped, fp32).values():
            assert np.abs(w.q.astype(int)).max() <= 127
    assert s1["timings_s"]["reconstruct"] > 0 and s1["timings_s"]["reconstruct_ort-cpu"] > 0
    assert s1["targets"]["openvino"]["quantization"].get("reconstruction") is None
    assert "reconstruction:" in (run / "results" / "report.md").read_text()
    s2 = int8_flow(config=_cfg(tmp_path, tiny_model, tiny_data, run_id="r2", targets=targets, reconstruction=rec,
                               max_map_drop=None))
    for t in ("tensorrt", "ort-cpu"):
        assert s2["targets"][t]["quantization"]["sha256"] == s1["targets"][t]["quantization"]["sha256"]
    # one learned model per target in the cache: the second run read them
    assert len([p for p in (tmp_path / "runs" / ".cache" / "reconstruct").iterdir() if p.is_dir()]) == 2


def test_flow_on_an_ultralytics_dataset_calibrates_on_its_train_split(harness, tmp_path, tiny_model):
    """--data: the val split evaluated, a seeded draw of the train split calibrates, and the report says
    which split calibrated and how the classes were matched."""
    from flows.int8_flow import int8_flow
    from tiny import tiny_yolo_dataset

    data = tiny_yolo_dataset(tmp_path / "ds", n=6, calib=8)
    cfg = RunConfig.model_validate(dict(model=tiny_model, data=data, calib_count=5, run_root=tmp_path / "runs",
                                        eval={"providers": ["cpu"], "warmup": 1}, smoke_samples=2))
    s = int8_flow(config=cfg)
    run = Path(s["run_dir"])
    cal = json.loads((run / "quantize-int8" / "calibration.json").read_text())
    assert cal["count"] == 5 and all("/images/train/" in f for f in cal["files"])
    assert s["calibration"]["path"] == f"{data} (train split)"
    assert s["fp32"]["images"] == 6 and s["data"]["format"] == "ultralytics" and s["data"]["split"] == "val"
    assert s["data"]["classes"]["how"] == "names-in-order"
    report = (run / "results" / "report.md").read_text()
    assert f"- evaluated: the val split of `{data}` (6 images in the split, 6 boxes)" in report
    assert f"- calibration: 5 images of {data} (train split)" in report
    assert "- classes: the model's 1 class names match" in report
