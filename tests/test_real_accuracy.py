"""Auto mode on the real COCO-trained YOLOv10s in ../shared (skipped with its reason when absent)."""
import json

import onnx
import pytest

from conftest import shared_path
from tasks.config import RunConfig
from tasks.quantization.layers import quantized_layers


@pytest.mark.slow
@pytest.mark.shared
def test_yolov10s_auto_mode_fits_every_target_in_the_budget_with_nearly_every_convolution_in_int8(tmp_path):
    from tasks.steps import run_int8

    model = shared_path("models/yolov10s-coco/yolov10s.onnx")
    data = shared_path("data")
    cfg = RunConfig.model_validate({
        "model": str(model), "calib_images": str(data / "coco-val2017-calib/images"),
        "images": str(data / "coco-val2017-mini/images"),
        "annotations": str(data / "coco-val2017-mini/annotations/instances_val2017.json"),
        "targets": ["tensorrt", "ort-cpu"], "accuracy_budget": 0.5, "max_map_drop": None,
        "run_root": str(tmp_path / "runs"), "run_id": "auto", "eval": {"providers": ["cpu"]}})
    s = run_int8(cfg)
    floors = {"tensorrt": 0.97, "ort-cpu": 0.95}
    run = tmp_path / "runs" / "auto"
    for name, t in s["targets"].items():
        g = t["accuracy_guard"]
        assert g["target"] == name and g["met"], (name, g["reason"])
        assert t["delta"]["map50_95"] * 100 >= -0.5 - 1e-9, name
        assert t["quantization"]["int8_conv_mac_share"] >= floors[name], name
        assert t["sensitivity"]["layers"] and t["sensitivity"]["blocks"]
        qdir = {"tensorrt": "quantize-int8", "ort-cpu": "quantize-int8-ort-cpu"}[name]
        assert json.loads((run / qdir / "accuracy-guard.json").read_text())["chosen"] == g["chosen"]
        # the published model keeps every layer auto mode chose in float out of INT8
        onnx_name = {"tensorrt": "yolov10s-int8-qdq.onnx", "ort-cpu": "yolov10s-int8-ort-cpu.onnx"}[name]
        q = onnx.load(str(run / "onnx" / onnx_name))
        assert not set(g["float_layers"]) & set(quantized_layers(q))
    md = (run / "results" / "report.md").read_text()
    assert "Accuracy guard, ort-cpu" in md
    assert "**Regression gate: off** - gate off: drop" in md  # max_map_drop None: the gate says it is off
