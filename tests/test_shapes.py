"""Dynamic-shape exports on tiny graphs built here: the static copy every step measures, the
export's axes put back on a model, and the check that decides whether they can be kept."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tasks.evaluation.shapes import (check_restored, declared_dims, dynamic_axes, dynamic_record, metadata_imgsz,
                                     other_shape, pin, restore_axes)


def _conv_model(dims, reshape_to=None):
    """x -> Conv(3->4, 3x3, pad 1) -> y; with `reshape_to`, a Reshape to a constant shape after it (what
    a static export bakes in, and what breaks when the input size changes)."""
    w = numpy_helper.from_array(np.random.RandomState(0).randn(4, 3, 3, 3).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv")]
    inits = [w]
    if reshape_to is not None:
        inits.append(numpy_helper.from_array(np.array(reshape_to, np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["c", "shape"], ["y"], name="reshape"))
        out_dims = ["n", None]
    else:
        nodes.append(helper.make_node("Identity", ["c"], ["y"]))
        out_dims = ["n", 4, "h", "w"]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    m.metadata_props.add(key="imgsz", value="[64, 96]")
    return m


def test_axes_and_metadata_are_read():
    m = _conv_model(["n", 3, "h", "w"])
    assert dynamic_axes(m) == {"x": ["n", 3, "h", "w"], "y": ["n", 4, "h", "w"]}
    assert dynamic_axes(_conv_model([1, 3, 64, 96])) == {}
    assert metadata_imgsz(m) == (64, 96)
    assert other_shape(dynamic_axes(m), "x", (1, 3, 64, 96)) == (2, 3, 32, 32)  # batch 2, two strides smaller
    assert other_shape(dynamic_axes(m), "x", (1, 3, 640, 640), 64) == (2, 3, 512, 512)  # a P6 model's stride
    assert dynamic_record(m, None) == {"dynamic_axes": dynamic_axes(m), "size_from": "the export's imgsz metadata",
                                       "metadata_imgsz": (64, 96), "stride": 32}
    assert dynamic_record(m, [32])["size_from"] == "--imgsz"
    assert dynamic_record(_conv_model([1, 3, 64, 96]), None) == {}
    m.metadata_props.add(key="stride", value="64")
    assert dynamic_record(m, [128])["stride"] == 64


def test_the_static_copy_has_the_run_size_and_the_output_shapes_it_then_has():
    m = _conv_model(["n", 3, "h", "w"])
    p = pin(m, (1, 3, 64, 96))
    assert declared_dims(p.graph.input[0]) == [1, 3, 64, 96] and declared_dims(p.graph.output[0]) == [1, 4, 64, 96]
    assert dynamic_axes(p) == {}
    assert declared_dims(m.graph.input[0]) == ["n", 3, "h", "w"]  # the source is left as it was


def test_axes_put_back_are_kept_when_the_model_runs_at_other_sizes_with_the_same_outputs():
    m = _conv_model(["n", 3, "h", "w"])
    p = pin(m, (1, 3, 64, 96))
    r = restore_axes(p, dynamic_axes(m))
    assert declared_dims(r.graph.input[0]) == ["n", 3, "h", "w"] and declared_dims(r.graph.output[0]) == ["n", 4, "h", "w"]
    x = np.random.RandomState(1).rand(1, 3, 64, 96).astype(np.float32)
    rec = check_restored(p, r, dynamic_axes(m), x)
    assert rec["kept"] and rec["checked_at"] == [[1, 3, 64, 96], [2, 3, 32, 32]]
    assert rec["outputs_at_other_shape"] == [[2, 4, 32, 32]] and rec["max_abs_diff_at_run_size"] == 0.0


def test_axes_are_not_kept_where_the_graph_baked_in_its_size_and_the_record_says_why():
    m = _conv_model(["n", 3, "h", "w"], reshape_to=[1, 4 * 64 * 96])  # a constant reshape: one size only
    p = pin(m, (1, 3, 64, 96))
    x = np.zeros((1, 3, 64, 96), np.float32)
    rec = check_restored(p, restore_axes(p, dynamic_axes(m)), dynamic_axes(m), x)
    assert not rec["kept"] and "does not run at [2, 3, 32, 32]" in rec["reason"]


def test_a_model_whose_outputs_change_with_the_axes_is_not_kept():
    m = _conv_model(["n", 3, "h", "w"])
    p = pin(m, (1, 3, 64, 96))
    other = restore_axes(p, dynamic_axes(m))
    other.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w"))
    rec = check_restored(p, other, dynamic_axes(m), np.ones((1, 3, 64, 96), np.float32))
    assert not rec["kept"] and "outputs at the run's size differ" in rec["reason"]


def test_the_evaluator_reads_a_dynamic_export_at_its_metadata_size(tmp_path):
    from tasks.evaluation.runtime import model_io

    m = _conv_model(["n", 3, "h", "w"])
    assert model_io(m)[1] == (1, 3, 64, 96)
    with pytest.raises(Exception, match="pass --imgsz"):
        del m.metadata_props[:]
        model_io(m)


def test_shape_arithmetic_is_found_and_nothing_that_reads_the_image():
    """Shape -> Gather -> Cast -> Range -> Add(0.5) -> Concat: an anchor grid built from a feature map's
    size, as a dynamic YOLO export's decode does; the Conv and a Reshape of image data are not in it."""
    from tasks.quantization.modelopt_ptq import shape_nodes

    i64 = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "idx"], ["h"], name="gather", axis=0),
        helper.make_node("Cast", ["h"], ["hf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Range", ["zero", "hf", "one"], ["r"], name="range"),
        helper.make_node("Add", ["r", "half"], ["grid"], name="add_half"),
        helper.make_node("Concat", ["grid", "grid"], ["anchors"], name="concat", axis=0),
        helper.make_node("Concat", ["s", "minus1"], ["target"], name="target"),
        helper.make_node("Reshape", ["c", "flat"], ["y"], name="reshape_data"),
    ]
    inits = [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w"), i64("idx", 2),
             numpy_helper.from_array(np.array(0, np.float32), "zero"), numpy_helper.from_array(np.array(1, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half"), i64("minus1", [-1]), i64("flat", [1, -1])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("anchors", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert shape_nodes(m) == ["gather", "cast", "range", "add_half", "concat", "target"]
    assert shape_nodes(_conv_model([1, 3, 64, 96])) == []  # no Shape op: nothing
