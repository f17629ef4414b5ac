"""YOLO26, Ultralytics' current family, in both of its export forms: the committed YOLO26n trained on the
demo's shapes (scripts/train_demo_model.py --arch yolo26n.yaml), end-to-end (`nms=False`: one-to-one
head, top-K in the graph, 1x300x6, metadata end2end True) and raw (the default export: one-to-many
head, 1x(4+nc)xN without DFL, metadata end2end False). Each is decoded by what its metadata says,
scores real detections, and quantizes for TensorRT. The three targets' INT8 figures are
bench/accuracy.py's (docs/your-data.md)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from conftest import ROOT
from tasks.config import RunConfig, load_demo_config
from tasks.evaluation.evaluate import EvalSettings, evaluate_model, resolve_format
from tasks.evaluation.runtime import model_metadata
from tasks.evaluation.sources.base import DataSpec

E2E = ROOT / "demo" / "model" / "yolo26n-shapes.onnx"
RAW = ROOT / "demo" / "model" / "yolo26n-shapes-raw.onnx"
CPU = EvalSettings(providers=["cpu"], warmup=1, deployed_runs=0, bootstrap_resamples=0)


@pytest.mark.parametrize("path, end2end, fmt, shape", [(E2E, "True", "yolov10", [1, 300, 6]),
                                                       (RAW, "False", "yolov8", [1, 10, 2100])])
def test_each_export_form_is_read_by_its_metadata(path, end2end, fmt, shape):
    m = onnx.load(str(path), load_external_data=False)
    meta = model_metadata(m)
    assert meta["end2end"] == end2end and meta["task"] == "detect" and "yolo26" in meta["description"].lower()
    got, nc, info = resolve_format(m, EvalSettings())
    assert got == fmt and info["output_shape"] == shape and len(info["names"]) == 6
    assert nc in (None, 6)


@pytest.mark.slow
def test_both_forms_detect_the_demo_shapes():
    """Real detections, classes matched by name, on the demo's 100 evaluation images. The floor is far
    below what either scores (model card) and far above a model that detects nothing (0)."""
    demo = load_demo_config()
    data = DataSpec(demo["paths"]["images"], demo["paths"]["annotations"])
    for path in (E2E, RAW):
        m = evaluate_model(path, data, settings=CPU)
        assert m["images"] == 100 and m["classes"]["how"] == "names-in-order"
        assert m["map50_95"] > 0.3, (path.name, m["map50_95"])


@pytest.mark.slow
def test_the_end_to_end_export_quantizes_for_tensorrt(tmp_path):
    from tasks.pipeline import run_int8

    demo = load_demo_config()
    p = demo["paths"]
    cfg = RunConfig(model=E2E, images=p["images"], annotations=p["annotations"], subset="20",
                    calib_images=p["calib_images"], calib_count=16, run_root=tmp_path / "runs", max_map_drop=None,
                    eval={"providers": ["cpu"], "warmup": 1, "deployed_runs": 0, "bootstrap_resamples": 0})
    s = run_int8(cfg)
    assert s["int8"]["detections"] > 0 and s["smoke"]["matched"] > 0
    assert s["quantization"]["topk_kept_float"] and Path(s["quantization"]["artifact"]).is_file()
