"""Structural assertions on tiny graphs, as ModelOpt's own tests do: which nodes got Q/DQ."""
import numpy as np
import onnx
import pytest

from tasks.config import QuantSettings
from tasks.quantization.modelopt_ptq import qdq_summary, resolve_calibration_eps, run_ptq

CAL = np.random.default_rng(0).random((8, 3, 64, 64), dtype=np.float32)


def _quantize(tmp_path, model, **settings):
    out = tmp_path / "q.onnx"
    rec = run_ptq(model, "images", CAL, QuantSettings(**settings), out, tmp_path / "ptq.log")
    return onnx.load(str(out)), rec


def _fed_by_dq(model, node_name):
    prod = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    src = prod.get(node.input[0])
    return src is not None and src.op_type == "DequantizeLinear"


@pytest.mark.slow
def test_default_ptq_quantizes_conv_keeps_topk_float_and_restores_metadata(tmp_path, tiny_model):
    q, rec = _quantize(tmp_path, tiny_model)
    assert _fed_by_dq(q, "/model.0/conv/Conv")
    assert not _fed_by_dq(q, "/model.23/TopK")
    assert rec["qdq"]["topk_with_qdq_input"] == []
    assert {p.key: p.value for p in q.metadata_props}["names"] == "{0: 'thing'}"
    assert rec["metadata_props_restored"] == 3
    assert rec["calibration_ep_used"].endswith("ExecutionProvider")
    assert (tmp_path / "ptq.log").stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


@pytest.mark.slow
def test_excluded_nodes_stay_float(tmp_path, tiny_model):
    q, rec = _quantize(tmp_path, tiny_model, exclude_nodes=["/model.0/"])
    assert not _fed_by_dq(q, "/model.0/conv/Conv")
    assert "/model.0/conv/Conv" in rec["qdq"]["left_in_float"]


def test_cpu_is_always_last_and_unavailable_eps_are_explained():
    eps, why = resolve_calibration_eps(["cuda:0", "cpu"], available=["CPUExecutionProvider"])
    assert eps == ["cpu"] and "cuda:0" in why[0]
    eps, why = resolve_calibration_eps(["cpu", "cuda:0"], available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert eps == ["cuda:0", "cpu"] and not why
    assert QuantSettings(calib_eps=["cpu", "trt", "cuda:1"]).calib_eps == ["trt", "cuda:1", "cpu"]
    with pytest.raises(ValueError):
        QuantSettings(calib_eps=["tpu"])


def test_qdq_summary_counts(tiny_model):
    s = qdq_summary(onnx.load(str(tiny_model)))
    assert s["qdq_nodes"] == 0 and s["quantized_nodes"] == 0
    assert set(s["left_in_float"]) == {"/model.0/conv/Conv", "/model.1/conv/Conv", "/model.23/head/Gemm"}


@pytest.mark.slow
def test_input_model_is_never_modified(tmp_path, tiny_model):
    from tasks.run.rundir import sha256_file

    before = sha256_file(tiny_model)
    listing = sorted(p.name for p in tiny_model.parent.iterdir())
    _quantize(tmp_path, tiny_model)
    assert sha256_file(tiny_model) == before
    assert sorted(p.name for p in tiny_model.parent.iterdir()) == listing  # no intermediates beside it


@pytest.mark.slow
def test_streamed_reader_gives_the_array_path_scales_and_ort_is_left_unpatched(tmp_path, tiny_model):
    """Max scales from the streamed reader equal those of ModelOpt's own array provider (the path
    used before streaming), and ModelOpt's ORT monkey-patches are undone afterwards."""
    from modelopt.onnx.quantization import quantize
    from onnxruntime.quantization import calibrate

    from tasks.quantization.calibration import CalibReader
    from tasks.quantization.entropy import activation_scales

    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    original = calibrate.MinMaxCalibrater.collect_data
    registries = dict(QDQRegistry), dict(QLinearOpsRegistry)
    # ops ModelOpt deletes from them: ORT's quantizer would then leave them unquantized
    assert "Split" in registries[0] and "Sigmoid" in registries[1]
    # method="max": the comparison is with ModelOpt's own max path (the default is now mse)
    run_ptq(tiny_model, "images", CalibReader(CAL, "images"), QuantSettings(method="max", calib_eps=["cpu"]),
            tmp_path / "r.onnx", tmp_path / "r.log")
    assert calibrate.MinMaxCalibrater.collect_data is original
    assert (dict(QDQRegistry), dict(QLinearOpsRegistry)) == registries  # edited in place, restored in place
    assert calibrate.MinMaxCalibrater.collect_data.__module__.startswith("onnxruntime")
    src = tmp_path / "copy.onnx"
    src.write_bytes(tiny_model.read_bytes())
    from tasks.quantization.modelopt_ptq import ort_quantization_restored

    with ort_quantization_restored():  # later tests in this process run ORT's quantizer unpatched
        quantize(onnx_path=str(src), calibration_data={"images": CAL}, calibration_method="max",
                 calibration_eps=["cpu"], op_types_to_exclude=["TopK"], high_precision_dtype="fp32",
                 output_path=str(tmp_path / "a.onnx"), nodes_to_exclude=[r"/model\.1/conv/Conv$"])
    got = activation_scales(onnx.load(str(tmp_path / "r.onnx")))
    ref = activation_scales(onnx.load(str(tmp_path / "a.onnx")))
    assert got == ref and got
