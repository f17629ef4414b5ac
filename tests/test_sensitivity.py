"""Sensitivity analysis and auto mode on a tiny graph with one deliberately fragile block."""
import json

import numpy as np
import onnx
import pytest

from tasks.config import QuantSettings, RunConfig
from tasks.evaluation.preprocess import PreprocessSpec, letterbox, load_rgb
from tasks.quantization.modelopt_ptq import run_ptq
from tasks.quantization.sensitivity import block_summary


@pytest.fixture
def fragile(tmp_path):
    from tiny import fragile_detector

    return fragile_detector(tmp_path / "models" / "fragile.onnx")


def _calib(tiny_data):
    files = sorted(tiny_data["calib_images"].iterdir())
    return np.stack([letterbox(load_rgb(p), (64, 64), PreprocessSpec())[0] for p in files])


def test_blocks_follow_module_paths():
    rows = [{"layer": "/model.1/conv/Conv", "nsr": 0.1, "mac_share": 0.2},
            {"layer": "/model.24/m/Conv", "nsr": 0.3, "mac_share": 0.1},
            {"layer": "/model.0/conv/Conv", "nsr": 0.05, "mac_share": 0.3}]
    assert [b["block"] for b in block_summary(rows)] == ["/model.24/", "/model.1/", "/model.0/"]


@pytest.mark.slow
def test_ranking_puts_the_fragile_layer_first(tmp_path, fragile, tiny_data):
    from tasks.quantization.layers import convs_of, layer_macs
    from tasks.quantization.recovery import compute_stats, ranking

    cal = _calib(tiny_data)
    run_ptq(fragile, "images", cal, QuantSettings(), tmp_path / "q.onnx", tmp_path / "q.log")
    fp = onnx.load(str(fragile))
    rows = ranking(compute_stats(fragile, tmp_path / "q.onnx", [cal[i:i + 1] for i in range(len(cal))], "images"),
                   layer_macs(fp), convs_of(fp))
    assert rows[0]["layer"] == "/model.24/m/Conv" and rows[0]["nsr"] > 5 * rows[1]["nsr"]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["tensorrt", "ort-cpu", "openvino"])
def test_auto_mode_keeps_the_fragile_layer_in_float(tmp_path, fragile, tiny_data, target):
    from tasks.quantization.layers import convs_of, layer_macs
    from tasks.pipeline import run_int8
    from tasks.targets.table import target as target_of

    cfg = RunConfig.model_validate({
        "model": str(fragile), "images": str(tiny_data["images"]), "annotations": str(tiny_data["annotations"]),
        "calib_images": str(tiny_data["calib_images"]), "calib_count": 8, "run_root": str(tmp_path / "runs"),
        "run_id": "auto", "eval": {"providers": ["cpu"], "warmup": 1, "class_map": [7, 7]}, "smoke_samples": 2,
        # ort-cpu quantizes the Add that writes the fragile tensor too (its grid constant alone loses the
        # logits): kept float here, so that the one fragile *layer* is what auto mode has to find
        "accuracy_budget": 0.5, "max_map_drop": None,
        "quant": {"exclude_op_types": ["Add"] if target == "ort-cpu" else []},
        "guard_min_mac_share": 0.5, "targets": [target]})
    s = run_int8(cfg)
    g = s["accuracy_guard"]
    assert g["budget"] == 0.5 and g["met"] is True and g["target"] == target
    assert g["candidates"][0]["drop_points"] >= 10  # everything quantized: the head collapses
    # the plain model misses the budget, so the target's other settings are candidates before any layer
    # goes back to float: tensorrt's other range estimator, openvino's NNCF fast bias correction
    other = {"tensorrt": "plain-percentile", "openvino": "plain-nncf-mixed-fast-bias"}.get(target)
    if other:
        assert g["candidates"][1]["name"] == other and g["candidates"][1]["float_layers"] == []
    assert "/model.24/m/Conv" in g["chosen"]["float_layers"]
    assert s["delta"]["map50_95"] * 100 >= -0.5
    fp = onnx.load(str(fragile))
    macs = layer_macs(fp)
    total = sum(macs[c] for c in convs_of(fp))
    assert g["int8_conv_mac_share"] == pytest.approx(
        1 - sum(macs[n] for n in g["chosen"]["float_layers"]) / total, abs=1e-4)
    assert s["quantization"]["int8_conv_mac_share"] == g["int8_conv_mac_share"]
    run = tmp_path / "runs" / "auto"
    t = target_of(target)
    qdir, which, suffix = t.qdir, t.which, t.suffix
    if target == "tensorrt":  # ranked first by its local noise ratio, and enough alone
        assert g["chosen"]["float_layers"] == ["/model.24/m/Conv"]
        assert s["sensitivity"]["layers"][0]["layer"] == "/model.24/m/Conv"
        assert json.loads((run / qdir / "accuracy-guard.json").read_text())["chosen"]["name"].endswith("float-1")
    # (ort-cpu also quantizes the small output of /model.23/cv/Conv, which its local ratio ranks first
    # though the Add after it drowns that error: the bisection then takes both)
    assert (run / qdir / "sensitivity.png").stat().st_size > 1000
    assert json.loads((run / f"{which}-coco" / "metrics.json").read_text())["map50_95"] == s["int8"]["map50_95"]
    assert f"Accuracy guard, {target}" in (run / "results" / "report.md").read_text()
    # the published model is the chosen one, with the head's conv in float
    if target == "openvino":  # as OpenVINO compiles the published IR: that convolution on a float kernel
        from tasks.quantization.nncf_ptq import conv_summary

        s_ov = conv_summary(fp, run / "openvino" / f"fragile-{suffix}.xml")
        assert "/model.24/m/Conv" in [f["layer"] for f in s_ov["float_convs"]] and s_ov["int8_convs"] >= 1
        return
    q = onnx.load(str(run / "onnx" / f"fragile-{suffix}.onnx"))
    prod = {o: n for n in q.graph.node for o in n.output}
    head = next(n for n in q.graph.node if n.name == "/model.24/m/Conv")
    assert prod[head.input[0]].op_type != "DequantizeLinear"


def test_the_head_rule_finds_the_final_head_convolutions(fragile, tiny_model):
    from tasks.quantization.modelopt_ptq import head_final_convs

    assert head_final_convs(onnx.load(str(fragile))) == ["/model.24/m/Conv"]
    assert head_final_convs(onnx.load(str(tiny_model))) == ["/model.1/conv/Conv"]  # no Conv after it
