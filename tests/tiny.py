"""Tiny ONNX graphs and COCO data built inside tests (no downloads, milliseconds to build)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

SIZE = 64
BOX = [16.0, 16.0, 48.0, 48.0]  # the one object every tiny image holds, xyxy
CAT_ID = 7


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def opset17_model(graph: onnx.GraphProto, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """`graph` as an opset-17, IR-8 model (what every ORT and ModelOpt version here loads), checked."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(model)
    return model


def _save_model(path: Path, nodes, inits, name: str, out_shape: list[int],
                metadata: dict[str, str] | None = None, in_type: int = TensorProto.FLOAT) -> Path:
    """A one-input (`images` 1x3x64x64), one-output (`output0`) opset-17 model, checked and saved."""
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("images", in_type, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)], inits)
    model = opset17_model(graph, metadata)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def tiny_detector(path: Path, seed: int = 0, with_topk: bool = True, names: str | None = "{0: 'thing'}") -> Path:
    """A YOLOv10-shaped detector (1x3x64x64 -> 1x2x6) that finds the tiny dataset's box.

    Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm gives a small input-dependent term that is
    added to a constant detection, so FP32 scores mAP 1.0 and quantization error is visible but small.
    A TopK over the scores mimics YOLOv10's post-processing (ModelOpt puts Q/DQ on its input)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    b1 = np.zeros(8, np.float32)
    w2 = rng.normal(0, 0.3, (8, 12)).astype(np.float32)  # Gemm: [1,8] x [8,12] -> two rows of 6
    b2 = np.zeros(12, np.float32)
    base = np.array([[*BOX, 0.9, 0.0], [0.0, 0.0, 8.0, 8.0, 0.3, 0.0]], np.float32)
    mask = np.array([[1, 1, 1, 1, 0.05, 0], [1, 1, 1, 1, 0.05, 0]], np.float32)  # jitter boxes, barely scores
    nodes = [
        helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], name="/model.0/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/model.0/act/Relu"),
        helper.make_node("Conv", ["r1", "w1b", "b1"], ["c2"], name="/model.1/conv/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="/model.1/act/Relu"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="/model.2/pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="/model.2/flatten"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["e"], name="/model.23/head/Gemm"),
        helper.make_node("Reshape", ["e", "shape"], ["e3"], name="/model.23/Reshape"),
        helper.make_node("Mul", ["e3", "mask"], ["jit"], name="/model.23/Mul"),
        helper.make_node("Add", ["jit", "base"], ["raw"], name="/model.23/Add"),
    ]
    inits = [_init("w1", w1), _init("w1b", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)),
             _init("b1", b1), _init("w2", w2), _init("b2", b2),
             _init("shape", np.array([1, 2, 6], np.int64)), _init("mask", mask[None]), _init("base", base[None])]
    if with_topk:
        # Sort rows by score with TopK + Gather, as the YOLOv10 post-processing does.
        nodes += [
            helper.make_node("Slice", ["raw", "s_start", "s_end", "s_axis"], ["scores3"], name="/model.23/Slice"),
            helper.make_node("Reshape", ["scores3", "shape2"], ["scores"], name="/model.23/Reshape_1"),
            helper.make_node("TopK", ["scores", "k"], ["topv", "topi"], name="/model.23/TopK", axis=1),
            helper.make_node("Squeeze", ["topi", "ax0"], ["idx"], name="/model.23/Squeeze"),
            helper.make_node("Gather", ["raw", "idx"], ["output0"], name="/model.23/Gather", axis=1),
        ]
        inits += [_init("s_start", np.array([4], np.int64)), _init("s_end", np.array([5], np.int64)),
                  _init("s_axis", np.array([2], np.int64)), _init("shape2", np.array([1, 2], np.int64)),
                  _init("k", np.array([2], np.int64)), _init("ax0", np.array([0], np.int64))]
    else:
        nodes.append(helper.make_node("Identity", ["raw"], ["output0"], name="/model.23/Identity"))
    meta = None if names is None else {"names": names, "stride": "32", "imgsz": f"[{SIZE}, {SIZE}]"}
    return _save_model(path, nodes, inits, "tiny_yolo", [1, 2, 6], meta)


def tiny_images(folder: Path, n: int, seed: int = 0, prefix: str = "img") -> list[Path]:
    """64x64 images: a noisy background with a bright square where BOX is."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = rng.integers(60, 120, (SIZE, SIZE, 3), dtype=np.uint8)
        x0, y0, x1, y1 = map(int, BOX)
        a[y0:y1, x0:x1] = rng.integers(180, 255, 3, dtype=np.uint8)
        p = folder / f"{prefix}{i:04d}.png"
        Image.fromarray(a).save(p)
        out.append(p)
    return out


def tiny_coco(folder: Path, n: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """(images dir, annotations json) with one object per image at BOX, category id CAT_ID."""
    img_dir = folder / "images"
    files = tiny_images(img_dir, n, seed, prefix="val")
    x0, y0, x1, y1 = BOX
    coco = {
        "images": [{"id": i + 1, "file_name": p.name, "width": SIZE, "height": SIZE} for i, p in enumerate(files)],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": CAT_ID, "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "area": (x1 - x0) * (y1 - y0), "iscrowd": 0} for i in range(n)],
        "categories": [{"id": CAT_ID, "name": "thing"}],
    }
    ann = folder / "annotations.json"
    ann.write_text(json.dumps(coco))
    return img_dir, ann


def tiny_yolo_dataset(root: Path, n: int = 6, calib: int = 8, names: object = None) -> Path:
    """The tiny COCO set laid out the Ultralytics way: root/images/{val,train}, root/labels/val (one
    `class cx cy w h` line per image at BOX), root/data.yaml with an absolute path. Returns the YAML."""
    tiny_images(root / "images" / "val", n, seed=0, prefix="val")
    tiny_images(root / "images" / "train", calib, seed=1, prefix="cal")
    x0, y0, x1, y1 = BOX
    line = f"0 {(x0 + x1) / 2 / SIZE:.6f} {(y0 + y1) / 2 / SIZE:.6f} {(x1 - x0) / SIZE:.6f} {(y1 - y0) / SIZE:.6f}\n"
    (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / "labels" / "val" / f"val{i:04d}.txt").write_text(line)
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                    "names": names if names is not None else {0: "thing"}}))
    return data


def fragile_detector(path: Path, seed: int = 0) -> Path:
    """A YOLOv5-shaped detector (1x3x64x64 -> 1x64x7: 8x8 cells, one class pair) with one fragile block.

    `/model.24/m/Conv` reads a tensor whose channels mix box sizes near 1000 with score logits of a
    few units: quantizing its input per tensor rounds every logit to 0, so all cells tie at score
    0.25 and the true detection drowns. Quantizing any other block alone costs next to nothing."""
    rng = np.random.default_rng(seed)
    c = 16

    def w(shape, s):
        return rng.normal(0, s, shape).astype(np.float32)

    grid = np.zeros((1, c, 8, 8), np.float32)
    ys, xs = np.mgrid[0:8, 0:8]
    grid[0, 0], grid[0, 1] = xs * 8 + 4, ys * 8 + 4
    grid[0, 2], grid[0, 3] = 1000.0, 1000.0   # off-object boxes: huge, so the mixed tensor spans ~1000
    grid[0, 4] = -3.0                          # objectness logit off the object
    grid[0, 5], grid[0, 6] = 6.0, -6.0         # class logits
    grid[0, :4, 4, 4] = [32.0, 32.0, 32.0, 32.0]  # the object: BOX = [16, 16, 48, 48]
    grid[0, 4, 4, 4] = 2.5
    eye = np.eye(c, dtype=np.float32)[:, :, None, None]
    nodes = [
        helper.make_node("Conv", ["images", "wa", "ba"], ["a"], name="/model.0/conv/Conv", kernel_shape=[8, 8],
                         strides=[8, 8]),
        helper.make_node("Relu", ["a"], ["ar"], name="/model.0/act/Relu"),
        helper.make_node("Conv", ["ar", "wb", "bz"], ["b"], name="/model.1/conv/Conv", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["b"], ["br"], name="/model.1/act/Relu"),
        helper.make_node("Conv", ["br", "wh1", "bz"], ["h1"], name="/model.23/cv/Conv", kernel_shape=[1, 1]),
        helper.make_node("Add", ["h1", "grid"], ["raw"], name="/model.23/grid/Add"),
        helper.make_node("Conv", ["raw", "eye", "bz"], ["h2"], name="/model.24/m/Conv", kernel_shape=[1, 1]),
        helper.make_node("Slice", ["h2", "s0", "s4", "ax1"], ["box"], name="/model.24/box/Slice"),
        helper.make_node("Slice", ["h2", "s4", "s7", "ax1"], ["logit"], name="/model.24/logit/Slice"),
        helper.make_node("Sigmoid", ["logit"], ["prob"], name="/model.24/Sigmoid"),
        helper.make_node("Concat", ["box", "prob"], ["cat"], name="/model.24/Concat", axis=1),
        helper.make_node("Reshape", ["cat", "shp"], ["flat"], name="/model.24/Reshape"),
        helper.make_node("Transpose", ["flat"], ["output0"], name="/model.24/Transpose", perm=[0, 2, 1]),
    ]
    inits = [_init("wa", w((c, 3, 8, 8), 0.01)), _init("ba", np.zeros(c, np.float32)),
             _init("wb", w((c, c, 1, 1), 0.05)), _init("wh1", w((c, c, 1, 1), 0.01)),
             _init("bz", np.zeros(c, np.float32)), _init("grid", grid), _init("eye", eye),
             _init("s0", np.array([0], np.int64)), _init("s4", np.array([4], np.int64)),
             _init("s7", np.array([7], np.int64)), _init("ax1", np.array([1], np.int64)),
             _init("shp", np.array([1, 7, 64], np.int64))]
    return _save_model(path, nodes, inits, "fragile_yolo", [1, 64, 7])


def tiny_silu_net(path: Path, seed: int = 0, opset: int = 17) -> Path:
    """A YOLO-shaped chain with SiLU activations (Sigmoid * Mul), module names as Ultralytics exports
    them: stem `/model.0/`, a backbone conv `/model.1/`, a head `/model.2/` whose last convolution
    feeds a Sigmoid "decode". Output 1x4x16x16 (not evaluable: for structural checks)."""
    rng = np.random.default_rng(seed)

    def conv(name: str, src: str, dst: str, cin: int, cout: int, stride: int = 1) -> tuple[list, list]:
        w = rng.normal(0, 0.4, (cout, cin, 3, 3)).astype(np.float32)
        b = rng.normal(0, 0.1, cout).astype(np.float32)
        nodes = [helper.make_node("Conv", [src, f"{name}.w", f"{name}.b"], [f"{dst}_c"], name=f"{name}/Conv",
                                  pads=[1, 1, 1, 1], strides=[stride, stride])]
        return nodes, [_init(f"{name}.w", w), _init(f"{name}.b", b)]

    def silu(name: str, src: str, dst: str) -> list:
        return [helper.make_node("Sigmoid", [src], [f"{dst}_s"], name=f"{name}/act/Sigmoid"),
                helper.make_node("Mul", [src, f"{dst}_s"], [dst], name=f"{name}/act/Mul")]

    nodes, inits = [], []
    for name, src, dst, cin, cout, stride in (("/model.0/conv", "images", "a0", 3, 8, 2),
                                              ("/model.1/conv", "a0", "a1", 8, 16, 2),
                                              ("/model.2/cv2.0/cv2.0.0/conv", "a1", "a2", 16, 16, 1)):
        n, i = conv(name, src, dst, cin, cout, stride)
        nodes += n + silu(name.rsplit("/", 1)[0], f"{dst}_c", dst)
        inits += i
    n, i = conv("/model.2/cv2.0/cv2.0.2", "a2", "h", 16, 4)
    nodes += n + [helper.make_node("Sigmoid", ["h_c"], ["output0"], name="/model.2/Sigmoid")]
    inits += i
    graph = helper.make_graph(nodes, "tiny_silu", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                 [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 7
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def odd_model(path: Path, out_shape: list[int], in_type: int = TensorProto.FLOAT) -> Path:
    """A valid ONNX model that is no usable YOLO export: a constant output of `out_shape` (float) beside an
    input `images` 1x3x64x64 of `in_type`. For the input checks, which must refuse it by name."""
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["output0"], name="const")]
    return _save_model(path, nodes, [_init("shape", np.array(out_shape, np.int64))], "odd", out_shape,
                       in_type=in_type)


def qdq_conv_model(weight_consumer: str = "Conv") -> onnx.ModelProto:
    """images -> Q/DQ (per-tensor int8) -> Conv whose weight is FP32 -> Q/DQ (per-channel, axis 0), the
    layout ModelOpt writes. Some weights sit exactly on half a step, where rounding must be to even."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    scale = (np.abs(w).reshape(4, -1).max(1) / 127).astype(np.float32)
    w[0, 0, 0, :3] = np.array([0.5, 1.5, -2.5], np.float32) * scale[0]  # ties
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(scale, "w_scale"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(1 / 127, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
             numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b")]
    nodes = [helper.make_node("QuantizeLinear", ["images", "x_scale", "x_zp"], ["xq"], name="xq"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="xd"),
             helper.make_node("QuantizeLinear", ["w", "w_scale", "w_zp"], ["wq"], name="wq", axis=0),
             helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wd"], name="wd", axis=0)]
    if weight_consumer == "Conv":
        nodes.append(helper.make_node("Conv", ["xd", "wd", "b"], ["out"], name="conv", pads=[1, 1, 1, 1]))
        out_shape = [1, 4, 8, 8]
    else:  # a weight read by an elementwise op: qdq_to_dq has no axis for it
        nodes.append(helper.make_node("Mul", ["xd", "wd"], ["out"], name="mul"))
        inits[0] = numpy_helper.from_array(w[:1, :, :1, :1].reshape(1, 3, 1, 1), "w")
        inits[1] = numpy_helper.from_array(scale[:1], "w_scale")
        inits[2] = numpy_helper.from_array(np.zeros(1, np.int8), "w_zp")
        out_shape = [1, 3, 8, 8]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)], inits)
    return opset17_model(g)


def run_model(m: onnx.ModelProto, x: np.ndarray, input_name: str = "images") -> np.ndarray:
    """The model's first output for `x` on ORT's CPU EP."""
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {input_name: x})[0]
