"""Per-layer surgery, MACs and local statistics on tiny graphs built here."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tasks.quantization.calibration import CalibReader
from tasks.config import OrtCpuSettings
from tasks.quantization.layers import (conv_mac_share, convs_of, exclude_layers, layer_group,
                          layer_macs, local_stats, qdq_int8_convs, quantized_layers)
from tasks.quantization.ort_qdq import build_ort_cpu

CAL = np.random.default_rng(0).random((9, 3, 64, 64), dtype=np.float32)


def _dq_inputs(model, name):
    prod = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == name)
    return [i for i in node.input if i and i in prod and prod[i].op_type == "DequantizeLinear"]


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": x})[0]


@pytest.fixture
def silu(tmp_path):
    from tiny import tiny_silu_net

    return tiny_silu_net(tmp_path / "t.onnx")


@pytest.fixture
def ort_q(tmp_path, silu):
    out = tmp_path / "q.onnx"
    build_ort_cpu(silu, CalibReader(CAL, "images"), OrtCpuSettings(), out,
                  tmp_path / "q.log")
    return onnx.load(str(out))


def test_macs_of_a_convolution_by_hand(silu):
    m = onnx.load(str(silu))
    macs = layer_macs(m)
    first = next(n for n in m.graph.node if n.op_type == "Conv")
    w = next(i for i in m.graph.initializer if i.name == first.input[1])
    shapes = onnx.shape_inference.infer_shapes(m)
    out = next(v for v in shapes.graph.value_info if v.name == first.output[0])
    hw = [d.dim_value for d in out.type.tensor_type.shape.dim]
    assert macs[first.name] == int(np.prod(hw)) * int(np.prod(w.dims[1:]))
    names = convs_of(m)
    assert conv_mac_share(names, macs, names) == 1.0
    assert conv_mac_share([], macs, names) == 0.0
    share = conv_mac_share(names[1:], macs, names)
    assert share == round(1 - macs[names[0]] / sum(macs[c] for c in names), 4)


def test_every_body_convolution_is_an_int8_layer(silu, ort_q):
    convs = convs_of(onnx.load(str(silu)))
    assert set(quantized_layers(ort_q)) == set(convs)
    # the ort-cpu layer's group is the convolution and its SiLU (Sigmoid, Mul)
    assert layer_group(ort_q, "/model.1/conv/Conv") == ["/model.1/conv/Conv", "/model.1/act/Sigmoid", "/model.1/act/Mul"]


def test_excluding_one_layer_removes_exactly_its_qdq(silu, ort_q):
    fp = onnx.load(str(silu))
    layer = "/model.1/conv/Conv"
    out = exclude_layers(ort_q, fp, [layer])
    onnx.checker.check_model(out)
    assert set(quantized_layers(out)) == set(quantized_layers(ort_q)) - {layer}
    # the layer and its activation read float tensors; its output keeps the Q/DQ the next layer reads
    for n in layer_group(ort_q, layer):
        assert _dq_inputs(out, n) == [], n
    nxt = [n for n in quantized_layers(out)]
    for n in nxt:
        assert _dq_inputs(out, n) == _dq_inputs(ort_q, n), n
    # exactly the Q/DQ nodes of that group are gone: its input, weight, bias, pre-activation, sigmoid
    gone = {n.name for n in ort_q.graph.node} - {n.name for n in out.graph.node}
    assert gone and all(("QuantizeLinear" in g or "DequantizeLinear" in g) for g in gone)
    assert not any("/model.2/" in g or "/model.0/" in g for g in gone)
    # the float weight is the FP32 model's, bit for bit
    conv = next(n for n in out.graph.node if n.name == layer)
    w = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}[conv.input[1]]
    ref = next(n for n in fp.graph.node if n.name == layer)
    np.testing.assert_array_equal(w, {i.name: numpy_helper.to_array(i) for i in fp.graph.initializer}[ref.input[1]])
    # and it runs, closer to FP32 than before on that layer's output
    x = CAL[:1]
    assert np.isfinite(_run(out, x)).all()


def test_excluding_every_layer_gives_the_fp32_outputs_back_where_no_activation_is_quantized(tmp_path):
    """tensorrt-style Q/DQ (on layer inputs only): with every layer excluded nothing is quantized."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["images", "s", "z"], ["xq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq_in"),
             helper.make_node("QuantizeLinear", ["w", "ws", "z"], ["wq"], name="q_w"),
             helper.make_node("DequantizeLinear", ["wq", "ws", "z"], ["wd"], name="dq_w"),
             helper.make_node("Conv", ["xd", "wd", "b"], ["output0"], name="/model.0/conv/Conv", pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(np.float32(1 / 127), "s"), numpy_helper.from_array(np.int8(0), "z"),
             numpy_helper.from_array(np.float32(0.01), "ws"), numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    q = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    q.ir_version = 8
    fp_nodes = [helper.make_node("Conv", ["images", "w", "b"], ["output0"], name="/model.0/conv/Conv", pads=[1, 1, 1, 1])]
    fp = helper.make_model(helper.make_graph(fp_nodes, "t", list(g.input), list(g.output), [inits[3], inits[4]]),
                           opset_imports=[helper.make_opsetid("", 17)])
    fp.ir_version = 8
    assert qdq_int8_convs(q) == ["/model.0/conv/Conv"]
    out = exclude_layers(q, fp, ["/model.0/conv/Conv"])
    assert [n.op_type for n in out.graph.node] == ["Conv"]
    x = rng.random((1, 3, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(_run(out, x), _run(fp, x), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not in the quantized model"):
        exclude_layers(q, fp, ["/nope/Conv"])

    # local statistics on this one layer, by hand
    samples = [rng.random((1, 3, 8, 8), dtype=np.float32) for _ in range(4)]
    stats = local_stats(fp, q, samples, "images")
    assert list(stats) == ["/model.0/conv/Conv"]
    diffs = [_run(fp, s) - _run(q, s) for s in samples]
    assert stats["/model.0/conv/Conv"]["group"] == ["/model.0/conv/Conv"]
    err = sum((d.astype(np.float64) ** 2).sum(axis=(0, 2, 3)) for d in diffs)
    sig = sum((_run(fp, s).astype(np.float64) ** 2).sum(axis=(0, 2, 3)) for s in samples)
    assert stats["/model.0/conv/Conv"]["nsr"] == pytest.approx(float(np.mean(err / sig)), rel=1e-4)
