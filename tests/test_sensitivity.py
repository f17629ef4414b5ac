"""Sensitivity analysis and auto mode on a tiny graph with one deliberately fragile block."""
import json

import numpy as np
import onnx
import pytest

from tasks.config import QuantSettings, RunConfig
from tasks.preprocess import PreprocessSpec, letterbox, load_rgb
from tasks.quantize import run_ptq
from tasks.sensitivity import analyse, exclusion_patterns, group_blocks, keep_only_block


@pytest.fixture
def fragile(tmp_path):
    from tiny import fragile_detector

    return fragile_detector(tmp_path / "models" / "fragile.onnx")


def _calib(tiny_data):
    files = sorted(tiny_data["calib_images"].iterdir())
    return np.stack([letterbox(load_rgb(p), (64, 64), PreprocessSpec())[0] for p in files])


def test_blocks_follow_module_paths(fragile):
    assert group_blocks(onnx.load(str(fragile))) == {
        "/model.0/": ["/model.0/conv/Conv"], "/model.1/": ["/model.1/conv/Conv"],
        "/model.23/": ["/model.23/cv/Conv"], "/model.24/": ["/model.24/m/Conv"]}
    assert exclusion_patterns(["/model.24/"]) == [r"/model\.24/"]


@pytest.mark.slow
def test_keep_only_block_bypasses_every_other_qdq(tmp_path, fragile, tiny_data):
    run_ptq(fragile, "images", _calib(tiny_data), QuantSettings(head_preset=False), tmp_path / "q.onnx",
            tmp_path / "q.log")
    part = keep_only_block(onnx.load(str(tmp_path / "q.onnx")), "/model.24/")
    prod = {o: n for n in part.graph.node for o in n.output}
    fed = {n.name: prod.get(n.input[0]) is not None and prod[n.input[0]].op_type == "DequantizeLinear"
           for n in part.graph.node if n.op_type == "Conv"}
    assert fed == {"/model.0/conv/Conv": False, "/model.1/conv/Conv": False, "/model.23/cv/Conv": False,
                   "/model.24/m/Conv": True}
    onnx.checker.check_model(part)


@pytest.mark.slow
def test_analysis_ranks_the_fragile_block_first(tmp_path, fragile, tiny_data):
    cal = _calib(tiny_data)
    run_ptq(fragile, "images", cal, QuantSettings(head_preset=False), tmp_path / "q.onnx", tmp_path / "q.log")
    rows = analyse(fragile, tmp_path / "q.onnx", "images", cal, "yolov5")
    assert rows[0]["block"] == "/model.24/" and rows[0]["cost"] > 0.3
    assert all(r["cost"] < 0.05 for r in rows[1:])


@pytest.mark.slow
def test_auto_mode_keeps_the_fragile_block_in_float(tmp_path, fragile, tiny_data):
    from tasks.steps import run_int8

    cfg = RunConfig.model_validate({
        "model": str(fragile), "images": str(tiny_data["images"]), "annotations": str(tiny_data["annotations"]),
        "calib_images": str(tiny_data["calib_images"]), "calib_count": 8, "run_root": str(tmp_path / "runs"),
        "run_id": "auto", "eval": {"providers": ["cpu"], "warmup": 1, "class_map": [7, 7]}, "smoke_samples": 2,
        "accuracy_budget": 0.5, "max_map_drop": None, "quant": {"head_preset": False}})
    s = run_int8(cfg)
    g = s["accuracy_guard"]
    assert g["budget"] == 0.5 and g["met"] is True
    assert g["candidates"][0]["drop_points"] > 10  # everything quantized: the head collapses
    assert g["chosen"]["excluded_blocks"] == ["/model.24/"]
    assert s["quantization"]["excluded_nodes"] == [r"/model\.24/"]
    assert s["delta"]["map50_95"] * 100 >= -0.5
    assert g["quantized_conv_share"] == 0.75
    assert s["sensitivity"][0]["block"] == "/model.24/"
    run = tmp_path / "runs" / "auto"
    assert (run / "quantize-int8" / "sensitivity.png").stat().st_size > 1000
    assert json.loads((run / "quantize-int8" / "accuracy-guard.json").read_text())["chosen"]["name"].endswith("exclude-1")
    assert json.loads((run / "int8-coco" / "metrics.json").read_text())["map50_95"] == s["int8"]["map50_95"]
    assert "Accuracy guard" in (run / "results" / "report.md").read_text()
    # the published model is the chosen one, with the head's conv in float
    q = onnx.load(str(run / "onnx" / "fragile-int8-qdq.onnx"))
    prod = {o: n for n in q.graph.node for o in n.output}
    head = next(n for n in q.graph.node if n.name == "/model.24/m/Conv")
    assert prod[head.input[0]].op_type != "DequantizeLinear"


def test_head_preset_finds_the_final_head_convolutions(fragile, tiny_model):
    from tasks.quantize import head_final_convs

    assert head_final_convs(onnx.load(str(fragile))) == ["/model.24/m/Conv"]
    assert head_final_convs(onnx.load(str(tiny_model))) == ["/model.1/conv/Conv"]  # no Conv after it


@pytest.mark.slow
def test_head_preset_is_on_by_default_and_keeps_them_in_float(tmp_path, fragile, tiny_data):
    rec = run_ptq(fragile, "images", _calib(tiny_data), QuantSettings(), tmp_path / "q.onnx",
                  tmp_path / "q.log")
    assert rec["head_preset_nodes"] == ["/model.24/m/Conv"]
    assert "/model.24/m/Conv" in rec["qdq"]["left_in_float"]
    assert "/model.0/conv/Conv" not in rec["qdq"]["left_in_float"]
