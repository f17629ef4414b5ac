"""Auto mode on the real COCO-trained YOLOv10s in ../shared (skipped with its reason when absent): it
chooses on 60 images of the 300-image set and reports on the 79 others of coco-val2017-mini, so
its reported delta is not the one it optimised."""
import json

import onnx
import pytest

from conftest import shared_path
from tasks.config import RunConfig
from tasks.quantization.layers import quantized_layers
from tasks.steps.report import per_target


@pytest.mark.slow
@pytest.mark.shared
def test_yolov10s_auto_mode_chooses_on_other_images_and_keeps_nearly_every_convolution_in_int8(tmp_path):
    from tasks.pipeline import run_int8

    model = shared_path("models/yolov10s-coco/yolov10s.onnx")
    data = shared_path("data")
    cfg = RunConfig.model_validate({
        # 32 of the 80 calibration images (the default would take all 80): the estimator's count sweep
        # is bench/ranges.py's; here each extra image costs CI time in two calibration passes
        "model": str(model), "calib_images": str(data / "coco-val2017-calib/images"), "calib_count": 32,
        "images": str(data / "coco-val2017-mini/images"),
        "annotations": str(data / "coco-val2017-mini/annotations/instances_val2017.json"),
        "guard_images": str(data / "coco-val2017-300/images"),
        "guard_annotations": str(data / "coco-val2017-300/annotations/instances_val2017.json"),
        "guard_subset": "random:60",
        # the mission's artifact; auto mode's other targets run on tiny graphs in tests/test_sensitivity.py
        # and on these models in bench/verdicts.py (each real target here costs minutes of CI)
        "targets": ["tensorrt"], "accuracy_budget": 0.5, "max_map_drop": None,
        "run_root": str(tmp_path / "runs"), "run_id": "auto",
        "eval": {"providers": ["cpu"], "warmup": 1, "deployed_runs": 0}})
    s = run_int8(cfg)
    floors = {"tensorrt": 0.97, "ort-cpu": 0.95}
    run = tmp_path / "runs" / "auto"
    for name, t in per_target(s).items():
        g = t["accuracy_guard"]
        assert g["target"] == name
        assert g["selection"]["how"] == "separate" and g["selection"]["count"] == 60
        drops = [c["drop_points"] for c in g["candidates"]]
        assert g["chosen"]["drop_points"] <= drops[0]  # never worse than the plain model where it chose
        if g["met"]:
            assert g["chosen"]["drop_points"] <= 0.5 + 1e-9
        else:
            # The selection's own interval on 60 images is about +-1 point and the CPU moves its estimate
            # by tenths (this model at 80 calibration images missed by 0.06 on an AVX2 EPYC, met at 32):
            # "met" would be a threshold inside that spread. What must hold is that the search went on
            # past the plain model and kept its most accurate candidate.
            assert len(drops) >= 3 and g["chosen"]["drop_points"] == min(drops), (name, g["reason"])
        # On the 79 reported images the delta is an independent estimate: its interval (about 2 points
        # wide there; the CPU moves the estimate by tenths) must not show a loss beyond the budget: a
        # collapsed model, or one clearly worse (about 1.5 points and more), fails.
        lo, hi = t["delta"]["map50_95_ci"]
        assert hi * 100 >= -0.5, (name, t["delta"])
        assert g["expected"]["map50_95_ci"] and g["reported"]["map50_95"] == t["delta"]["map50_95"]
        assert t["quantization"]["int8_conv_mac_share"] >= floors[name], name
        assert t["sensitivity"]["layers"] and t["sensitivity"]["blocks"]
        qdir = {"tensorrt": "quantize-int8", "ort-cpu": "quantize-int8-ort-cpu"}[name]
        assert json.loads((run / qdir / "accuracy-guard.json").read_text())["chosen"] == g["chosen"]
        # the published model keeps every layer auto mode chose in float out of INT8
        onnx_name = {"tensorrt": "yolov10s-int8-qdq.onnx", "ort-cpu": "yolov10s-int8-ort-cpu.onnx"}[name]
        q = onnx.load(str(run / "onnx" / onnx_name))
        assert not set(g["float_layers"]) & set(quantized_layers(q))
    md = (run / "results" / "report.md").read_text()
    assert "Accuracy guard, tensorrt" in md and "expected from the selection images" in md
    assert "**Regression gate: off** - gate off: drop" in md  # max_map_drop None: the gate says it is off
