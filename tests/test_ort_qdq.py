"""The ort-cpu target on tiny graphs: which nodes got Q/DQ, which stayed float, and that ONNX
Runtime's CPU EP fuses the result into integer kernels."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tasks.quantization.calibration import CalibReader
from tasks.config import OrtCpuSettings
from tasks.quantization.ort_qdq import (MinMaxSafeReader, build_ort_cpu, cpu_has_vnni, resolve_reduce_range,
                                       with_min_opset)
from tasks.quantization.modelopt_ptq import decode_tail_nodes, head_final_convs

CAL = np.random.default_rng(0).random((9, 3, 64, 64), dtype=np.float32)


def _dq_fed(model, name, i=0):
    prod = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == name)
    src = prod.get(node.input[i])
    return src is not None and src.op_type == "DequantizeLinear"


def test_head_and_decode_are_recognised(tmp_path):
    from tiny import tiny_silu_net

    m = onnx.load(str(tiny_silu_net(tmp_path / "t.onnx")))
    assert head_final_convs(m) == ["/model.2/cv2.0/cv2.0.2/Conv"]
    assert decode_tail_nodes(m) == ["/model.2/Sigmoid"]


@pytest.mark.parametrize("stem,head", [(True, True), (False, False)])
def test_ort_cpu_quantizes_the_body_into_integer_kernels(tmp_path, stem, head):
    """Everything but the decode in integer kernels; the stem and the head's final convolution
    excluded by name stay float (their weights too)."""
    from tiny import tiny_silu_net

    src = tiny_silu_net(tmp_path / "t.onnx")
    out = tmp_path / "q.onnx"
    excluded = ["/model.0/", "/model.2/cv2.0/cv2.0.2/Conv"] if stem else []
    rec = build_ort_cpu(src, CalibReader(CAL, "images"), OrtCpuSettings(), out, tmp_path / "q.log",
                        exclude_nodes=excluded)
    q = onnx.load(str(out))
    assert _dq_fed(q, "/model.1/conv/Conv") and _dq_fed(q, "/model.2/cv2.0/cv2.0.0/conv/Conv")
    assert _dq_fed(q, "/model.0/conv/Conv") is not stem
    # a head conv kept in float may read a quantized activation, but its weights stay float
    assert _dq_fed(q, "/model.2/cv2.0/cv2.0.2/Conv", i=1) is not head
    assert _dq_fed(q, "/model.2/Sigmoid", i=0) is not head  # the decode computes in float; with the head's
    # last conv quantized, its *output* is quantized too (ORT puts a Q after a conv it fuses), so the
    # decode reads 8-bit values (recovery's half-float fix and head rule deal with that)
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "output0" for n in q.graph.node)
    kernels = rec["ort_cpu_kernels"]
    assert kernels["QLinearConv"] == 4 - stem - head
    assert kernels.get("Conv", 0) + kernels.get("FusedConv", 0) == stem + head  # float convolutions
    assert rec["activation_type"] == "uint8" and rec["per_channel"]
    s = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = s.run(None, {"images": CAL[:1]})[0]
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"images": CAL[:1]})[0]
    assert y.shape == ref.shape and np.isfinite(y).all() and np.abs(y - ref).mean() < 0.03
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.log", "q.onnx", "t.onnx"]  # nothing half-written left


def test_old_opset_models_are_converted_first(tmp_path):
    from tiny import tiny_silu_net

    src = tiny_silu_net(tmp_path / "t12.onnx", opset=12)
    conv, opset = with_min_opset(src, tmp_path)
    assert opset == 12 and onnx.load(str(conv)).opset_import[0].version == 13
    rec = build_ort_cpu(src, CalibReader(CAL, "images"), OrtCpuSettings(), tmp_path / "q.onnx", tmp_path / "q.log")
    assert rec["source_opset"] == 12 and rec["opset_converted_to"] == 13
    ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])  # loads (ORT refuses opset 12)


def test_min_max_merging_never_ends_on_an_empty_batch():
    r = CalibReader(CAL[:8], "images")
    safe = MinMaxSafeReader(r, 4)  # 8 samples, merged every 4: ORT would end on an empty batch
    got = []
    while (b := safe.get_next()) is not None:
        got.append(b["images"])
    assert len(got) == 9 and np.array_equal(got[-1], got[-2])
    safe.rewind()
    assert sum(1 for _ in iter(safe.get_next, None)) == 9
    assert len([b for b in iter(MinMaxSafeReader(CalibReader(CAL[:7], "images"), 4).get_next, None)]) == 7


def test_vnni_detection_and_reduce_range_choice():
    assert cpu_has_vnni("flags\t\t: fpu sse avx2 avx512f avx512_vnni\n") is True
    assert cpu_has_vnni("flags\t\t: fpu sse avx2\n") is False
    assert cpu_has_vnni("processor : 0\n") is None
    assert resolve_reduce_range("auto", False)[0] is True
    assert resolve_reduce_range("auto", True)[0] is False
    assert resolve_reduce_range("auto", None)[0] is False
    assert resolve_reduce_range("on", True)[0] is True and resolve_reduce_range("off", False)[0] is False


def test_a_model_with_nothing_left_to_quantize_is_refused_with_the_reason(tmp_path, tiny_model):
    with pytest.raises(RuntimeError, match="drop some --exclude-nodes / --exclude-op-types"):
        build_ort_cpu(tiny_model, CalibReader(CAL, "images"), OrtCpuSettings(), tmp_path / "q.onnx",
                      tmp_path / "q.log", exclude_op_types=["Conv"])
    assert not (tmp_path / "q.onnx").exists() and (tmp_path / "q.log").exists()


def test_tensor_overrides_fix_the_scales_they_name(tmp_path):
    from tiny import tiny_silu_net

    from tasks.quantization.entropy import activation_scales
    from tasks.quantization.ort_qdq import symmetric_overrides

    src = tiny_silu_net(tmp_path / "t.onnx")
    rec = build_ort_cpu(src, CalibReader(CAL, "images"), OrtCpuSettings(), tmp_path / "q.onnx",
                        tmp_path / "q.log",
                        tensor_overrides=symmetric_overrides({"a1": 2.0}))
    q = onnx.load(str(tmp_path / "q.onnx"))
    assert rec["tensor_overrides"] == 1
    assert activation_scales(q)["a1"] == pytest.approx(4.0 / 255)
    zp = {i.name: i for i in q.graph.initializer}
    qnode = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "a1")
    assert onnx.numpy_helper.to_array(zp[qnode.input[2]]) == 128


def test_mean_max_is_the_mean_of_each_samples_extremes(tmp_path):
    from onnx import TensorProto, helper

    from tasks.quantization.ort_ranges import collect_extremes, range_overrides

    g = helper.make_graph([helper.make_node("Relu", ["images"], ["r"]), helper.make_node("Neg", ["images"], ["out"])], "g",
                          [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp_path / "g.onnx"))
    samples = np.array([[1, -2, 0.5, 0], [3, 0, 0, 1], [0, 0, -6, 0]], np.float32)
    ext, n = collect_extremes(tmp_path / "g.onnx", CalibReader(samples, "images"))
    assert n == 3 and set(ext) == {"images", "r", "out"}
    assert (ext["images"]["min"], ext["images"]["max"]) == (-6.0, 3.0)  # what ORT's minmax would take
    ov = range_overrides(ext, "mean-max")
    assert float(ov["images"][0]["rmin"]) == pytest.approx(-8 / 3) and float(ov["images"][0]["rmax"]) == pytest.approx(4 / 3)
    assert float(ov["r"][0]["rmin"]) == 0 and float(ov["r"][0]["rmax"]) == pytest.approx(4 / 3)
    assert float(ov["out"][0]["rmin"]) == pytest.approx(-4 / 3) and float(ov["out"][0]["rmax"]) == pytest.approx(8 / 3)
    # memory flat in the count: the same five numbers per tensor for 150 samples
    more, _ = collect_extremes(tmp_path / "g.onnx", CalibReader(np.repeat(samples, 50, 0), "images"))
    assert {t: set(v) for t, v in more.items()} == {t: set(v) for t, v in ext.items()}
    assert more["images"]["min_sum"] / more["images"]["samples"] == pytest.approx(-8 / 3)
    with pytest.raises(ValueError, match="unknown ort-cpu range estimator"):
        range_overrides(ext, "median")


def test_mean_max_ranges_arrive_unchanged_in_the_ort_cpu_model(tmp_path):
    from onnx import numpy_helper

    from tiny import tiny_silu_net
    from tasks.quantization.ort_ranges import collect_extremes, mean_minmax

    src = tiny_silu_net(tmp_path / "t.onnx")
    out = tmp_path / "q.onnx"
    rec = build_ort_cpu(src, CalibReader(CAL, "images"), OrtCpuSettings(calibrate_method="mean-max"), out, tmp_path / "q.log")
    assert rec["ranges"]["method"] == "mean-max" and rec["ranges"]["samples"] == len(CAL) and rec["calib_samples"] == len(CAL)
    ext, _ = collect_extremes(src, CalibReader(CAL, "images"))
    q = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    checked = 0
    for n in q.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in inits:
            continue
        lo, hi = mean_minmax(ext[n.input[0]])
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # ORT's range always holds zero
        scale, zp = float(inits[n.input[1]]), int(inits[n.input[2]])
        assert scale == pytest.approx((hi - lo) / 255, rel=1e-5), n.input[0]
        assert zp == round(-lo / scale)
        checked += 1
    assert checked >= 5
    # never wider than the extremes ORT's minmax would start from
    assert all(st["min"] <= mean_minmax(st)[0] <= mean_minmax(st)[1] <= st["max"] for st in ext.values())
