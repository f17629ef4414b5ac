"""fp16 float parts for TensorRT (`--set quant.high_precision_dtype=fp16`): ModelOpt's own conversion of
the finished model, judged on ONNX Runtime by a twin with its Q/DQ in float32 where ORT's fp16
QuantizeLinear does not round to nearest; refused where it cannot apply."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tasks.config import RunConfig
from tasks.evaluation.runtime import fp16_quantize_rounding
from tasks.quantization.modelopt_ptq import float16_parts
from tiny import qdq_conv_model, run_model


def _float_types(model: onnx.ModelProto) -> set[int]:
    return {i.data_type for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT,
                                                                            onnx.TensorProto.FLOAT16)}


def test_float16_parts_keep_io_float32_and_the_twin_keeps_qdq_in_float32():
    q = qdq_conv_model()
    m16, twin = float16_parts(q), float16_parts(q, qdq_in_fp32=True)
    assert onnx.TensorProto.FLOAT16 in _float_types(m16)
    for m in (m16, twin):
        assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    # the twin's QuantizeLinear reads float32 (a Cast to float32 in front, or the float32 input itself)
    prod = {o: n for n in twin.graph.node for o in n.output}
    inits = {i.name: i for i in twin.graph.initializer}
    for n in twin.graph.node:
        if n.op_type == "QuantizeLinear":
            src = prod.get(n.input[0])
            assert src is None or src.op_type == "Cast" and src.attribute[0].i == onnx.TensorProto.FLOAT, n.name
            assert inits[n.input[1]].data_type == onnx.TensorProto.FLOAT
    x = np.random.default_rng(0).random((1, 3, 8, 8), dtype=np.float32)
    ref = run_model(q, x)
    # the twin differs from the float32 Q/DQ model by float16 rounding only, never by a shifted grid
    np.testing.assert_allclose(run_model(twin, x), ref, atol=0.01 * np.abs(ref).max())


def test_the_rounding_probe_reports_what_ort_does():
    r = fp16_quantize_rounding()
    assert set(r) == {"provider", "exact", "wrong", "of", "example"} and r["of"] == 10
    assert r["exact"] == (r["wrong"] == 0)


@pytest.mark.slow
def test_an_fp16_run_ships_fp16_and_evaluates_a_faithful_twin(tmp_path, tiny_model, tiny_data):
    from tasks.pipeline import run_int8

    cfg = RunConfig(model=tiny_model, images=tiny_data["images"], annotations=tiny_data["annotations"],
                    calib_images=tiny_data["calib_images"], calib_count=6, run_root=tmp_path / "runs", run_id="r",
                    smoke_samples=2, max_map_drop=None, quant={"high_precision_dtype": "fp16"},
                    eval={"providers": ["cpu"], "warmup": 1, "deployed_runs": 0})
    s = run_int8(cfg)
    run = Path(s["run_dir"])
    shipped = onnx.load(str(run / "onnx" / "tiny-int8-qdq.onnx"))
    assert onnx.TensorProto.FLOAT16 in _float_types(shipped)
    prec = s["quantization"]["precision"]
    assert prec["dtype"] == "fp16" and prec["ort_fp16_quantize_rounding"] == fp16_quantize_rounding()
    twin = run / "quantize-int8" / "evaluated.onnx"
    assert twin.is_file() == (not prec["ort_fp16_quantize_rounding"]["exact"])
    metrics = json.loads((run / "int8-coco" / "metrics.json").read_text())
    assert metrics["model"]["path"] == str(twin if twin.is_file() else run / "onnx" / "tiny-int8-qdq.onnx")
    report = (run / "results" / "report.md").read_text()
    assert "- float parts in fp16 (modelopt.onnx.autocast.convert_to_f16" in report
    assert s["fp32"]["map50"] == pytest.approx(1.0) and s["int8"]["map50"] > 0.9
