"""A sweep's children are checked before any starts, and its table is built from their summaries."""
import json

import pytest
from pydantic import ValidationError

from tasks.sweep import SweepConfig, child_configs, child_row, sweep_markdown


def test_a_bad_child_fails_the_sweep_before_any_run_and_names_the_child(tmp_path):
    sweep = SweepConfig.model_validate({"run_root": str(tmp_path), "children": [
        {"name": "ok", "config": {"demo": True}}, {"name": "typo", "config": {"demo": True, "targets": ["tensorrrt"]}}]})
    with pytest.raises(ValueError, match="sweep child 'typo'.*targets"):
        child_configs(sweep, "s1")
    with pytest.raises(ValidationError, match="child names repeat"):
        SweepConfig.model_validate({"children": [{"name": "a"}, {"name": "a"}]})


def test_rows_come_from_the_children_summaries(tmp_path):
    sweep = SweepConfig.model_validate({"run_root": str(tmp_path), "children": [
        {"name": "trt", "config": {"demo": True}}, {"name": "lost", "config": {"demo": True}}]})
    children = child_configs(sweep, "s1")
    assert children["trt"]["run_id"] == "s1-trt" and children["trt"]["run_root"] == str(tmp_path)
    res = tmp_path / "s1-trt" / "results"
    res.mkdir(parents=True)
    res.joinpath("summary.json").write_text(json.dumps({
        "model": {"path": "demo/model/yolov10n-shapes.onnx"}, "fp32": {"map50_95": 0.75},
        "quantization": {"target": "tensorrt", "size_bytes": 2 ** 21}, "int8": {"map50_95": 0.74},
        "delta": {"map50_95": -0.01, "latency_ratio": 1.5},
        "placement": {"calibration": {"host": "h", "pid": 7, "ppid": 3}}}))
    rows = [child_row(n, v, "COMPLETED" if n == "trt" else "CRASHED") for n, v in children.items()]
    assert rows[0]["targets"]["tensorrt"]["drop_points"] == 1.0 and rows[0]["parent_process"] == 3
    table = sweep_markdown(rows)
    assert "| trt | COMPLETED | yolov10n-shapes.onnx | tensorrt | 0.7500 | 0.7400 | -1.00 | x1.50 | 2.00 | h (worker pid 3) |" in table
    assert "| lost | CRASHED |" in table
