import json
import subprocess
import sys

import pytest

from conftest import ROOT, shared_path
from tasks.evaluation.decode import DecodeError
from tasks.evaluation.evaluate import EvalSettings, evaluate_model
from tasks.evaluation.preprocess import ImageError
from tasks.evaluation.sources.base import DataSpec

CPU = EvalSettings(providers=["cpu"], warmup=1)


def test_tiny_model_end_to_end(tiny_model, tiny_data):
    m = evaluate_model(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]), settings=CPU)
    assert m["model"]["output_format"] == "yolov10"
    assert m["images"] == 6 and m["detections"] >= 6
    assert m["map50"] == pytest.approx(1.0) and m["map50_95"] > 0.8
    assert set(m["latency_ms"]) >= {"p50", "p90", "mean", "min"}
    assert m["provider"] == "CPUExecutionProvider" and m["runtime"]["ort_version"]
    assert len(m["stats"]) == 12 and len(m["model"]["sha256"]) == 64


def test_subset_restricts_images(tiny_model, tiny_data):
    m = evaluate_model(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]), subset=2, settings=CPU)
    assert m["images"] == 2 and m["image_ids"] == [1, 2]


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_sharded_evaluation_gives_the_unsharded_figures(tiny_model, tiny_data, shards):
    """Shards on different threads counts, merged and scored once: the same detections, mAP and
    per-class AP as one pass over every image."""
    from tasks.evaluation.evaluate import detect_shard, score_shards, shard_bounds

    one = evaluate_model(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]), settings=CPU)
    bounds = shard_bounds(6, shards)
    assert [b for a in bounds for b in a][::2] == sorted({a for a, _ in bounds}) and bounds[-1][1] == 6
    parts = [detect_shard(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]), None, CPU, 0, b, threads=1)
             for b in reversed(bounds)]  # any order of arrival
    merged = score_shards(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]), None, CPU, 0, parts)
    assert merged["stats"] == one["stats"] and merged["per_class_ap"] == one["per_class_ap"]
    assert merged["detections"] == one["detections"] and merged["image_ids"] == one["image_ids"]
    assert merged["shards"] == len(bounds)
    with pytest.raises(ValueError, match="shards cover"):
        score_shards(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]), None, CPU, 0, parts[:-1] or [])


def test_missing_image_is_named(tiny_model, tiny_data):
    (tiny_data["images"] / "val0003.png").unlink()
    with pytest.raises(FileNotFoundError, match="val0003.png"):
        evaluate_model(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]), settings=CPU)


def test_image_size_mismatch_is_named(tiny_model, tiny_data):
    ann = json.loads(tiny_data["annotations"].read_text())
    ann["images"][1]["width"] = 65
    tiny_data["annotations"].write_text(json.dumps(ann))
    with pytest.raises(ImageError, match="val0001.png is 64x64 but its annotation says 65x64"):
        evaluate_model(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]), settings=CPU)


def test_class_count_mismatch_needs_a_map(tmp_path, tiny_data):
    from tiny import tiny_detector

    m = tiny_detector(tmp_path / "three.onnx", names="{0: 'a', 1: 'b', 2: 'c'}")
    with pytest.raises(ValueError, match=r"the model has 3 classes, the data 1 category; model classes not in the "
                                         r"data: 0 'a', 1 'b', 2 'c'; data categories not in the model: 7 'thing'"):
        evaluate_model(m, DataSpec(tiny_data["images"], tiny_data["annotations"]), settings=CPU)
    ok = evaluate_model(m, DataSpec(tiny_data["images"], tiny_data["annotations"]),
                        settings=EvalSettings(providers=["cpu"], warmup=0, class_map=[7, 7, 7]))
    assert ok["map50"] == pytest.approx(1.0)


def test_unknown_output_shape(tmp_path, tiny_data):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("ReduceMean", ["images"], ["y"], keepdims=0)], "g",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    p = tmp_path / "scalar.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    with pytest.raises(DecodeError, match="not a YOLO detection output"):
        evaluate_model(p, DataSpec(tiny_data["images"], tiny_data["annotations"]), settings=CPU)


def test_an_explicit_format_does_not_let_a_feature_map_through(tmp_path, tiny_data):
    """--output-format skips the shape's detection, not the decoders' need for a (1 x) rows x columns table:
    refused before the first image, naming the model."""
    from tasks.evaluation.evaluate import prepare_eval
    from tiny import odd_model

    p = odd_model(tmp_path / "map.onnx", [1, 5, 5, 5])
    with pytest.raises(DecodeError, match=rf"model .*map.onnx: output shape \[1, 5, 5, 5\].*--output-format yolov8 "
                                          rf"cannot decode it"):
        prepare_eval(p, DataSpec(tiny_data["images"], tiny_data["annotations"]), None, EvalSettings(output_format="yolov8"))


def test_cli_writes_metrics_and_prints_table(tmp_path, tiny_model, tiny_data):
    out = tmp_path / "m.json"
    r = subprocess.run([sys.executable, str(ROOT / "flows" / "evaluate.py"), "--model", str(tiny_model),
                        "--images", str(tiny_data["images"]), "--annotations", str(tiny_data["annotations"]),
                        "--providers", "cpu", "--out", str(out), "--warmup", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "mAP50-95" in r.stdout
    m = json.loads(out.read_text())
    assert {"map50_95", "map50", "images", "provider", "latency_ms"} <= set(m)


def test_cli_bad_input_is_one_clear_line(tmp_path, tiny_data):
    r = subprocess.run([sys.executable, str(ROOT / "flows" / "evaluate.py"), "--model", str(tmp_path / "no.onnx"),
                        "--images", str(tiny_data["images"]), "--annotations", str(tiny_data["annotations"])],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no.onnx does not exist" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.shared
def test_yolov5n_reference_map_on_real_coco():
    """The evaluator against the independently measured reference in shared/models/yolov5n-coco/SOURCE.md."""
    model = shared_path("models/yolov5n-coco/yolov5n.onnx")
    data = shared_path("data/coco-val2017-mini")
    m = evaluate_model(model, DataSpec(data / "images", data / "annotations/instances_val2017.json"),
                       settings=EvalSettings(providers=["cpu"], warmup=1, conf_thres=0.001, iou_thres=0.65,
                                             max_det=300))
    assert m["images"] == 79 and m["model"]["output_format"] == "yolov5"
    assert m["map50_95"] == pytest.approx(0.316, abs=0.005)
    assert m["map50"] == pytest.approx(0.510, abs=0.005)


def test_openvino_and_onnxruntime_give_the_same_figures_on_an_fp32_model(tiny_model, tiny_data):
    """The evaluator's OpenVINO path (f32 precision) and its ORT path: same preprocessing, decoding and
    scoring, so the same COCO figures on an FP32 model; each run names its runtime and CPU."""
    pytest.importorskip("openvino")
    ort_m = evaluate_model(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]), settings=CPU)
    ov_m = evaluate_model(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]),
                          settings=EvalSettings(runtime="openvino", warmup=1))
    assert ov_m["stats"] == pytest.approx(ort_m["stats"], abs=1e-4)
    assert ov_m["detections"] == ort_m["detections"]
    assert ov_m["runtime"]["runtime"] == "openvino" and ov_m["runtime"]["openvino_version"]
    assert ort_m["runtime"]["runtime"] == "onnxruntime" and ov_m["runtime"]["cpu"] == ort_m["runtime"]["cpu"]
    assert ov_m["provider"] == "OpenVINO CPU"


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_every_latency_says_its_session_style_and_the_deployed_one_is_measured_too(tiny_model, tiny_data, runtime):
    from tasks.evaluation.evaluate import time_models

    settings = EvalSettings(providers=["cpu"], warmup=1, runtime=runtime, deployed_runs=7)
    m = evaluate_model(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]), settings=settings)
    assert m["runtime"]["session"].startswith("evaluator:") and m["latency_ms"]["n"] == 6
    assert m["latency_deployed_session"].startswith("deployed:") and m["latency_deployed_ms"]["n"] == 7
    timed = time_models({"a": tiny_model}, [p for p in sorted(tiny_data["images"].iterdir())][:2], settings, 1, rounds=2)
    a = timed["a"]
    assert a["latency_ms"]["n"] == 4 and a["latency_deployed_ms"]["n"] == 8  # 7 runs rounded up to 4 per round
    assert a["latency_deployed_session"].startswith("deployed:") and a["runtime"]["cpu"]["model_name"]
    off = evaluate_model(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]),
                         settings=settings.model_copy(update={"deployed_runs": 0}))
    assert "latency_deployed_ms" not in off


def test_cli_evaluates_an_openvino_ir_described_by_its_onnx_export(tmp_path, tiny_model, tiny_data):
    import openvino as ov

    xml = tmp_path / "tiny.xml"
    ov.save_model(ov.convert_model(str(tiny_model)), str(xml), compress_to_fp16=False)
    args = [sys.executable, str(ROOT / "flows" / "evaluate.py"), "--model", str(xml), "--images",
            str(tiny_data["images"]), "--annotations", str(tiny_data["annotations"]), "--warmup", "1"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--runtime openvino --io-model" in r.stderr and "Traceback" not in r.stderr
    out = tmp_path / "m.json"
    r = subprocess.run(args + ["--runtime", "openvino", "--io-model", str(tiny_model), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    m = json.loads(out.read_text())
    ref = evaluate_model(tiny_model, DataSpec(tiny_data["images"], tiny_data["annotations"]), settings=CPU)
    assert m["provider"] == "OpenVINO CPU" and m["stats"] == pytest.approx(ref["stats"], abs=1e-4)
