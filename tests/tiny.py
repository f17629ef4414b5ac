"""Tiny ONNX graphs and COCO data built inside tests (no downloads, milliseconds to build)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

SIZE = 64
BOX = [16.0, 16.0, 48.0, 48.0]  # the one object every tiny image holds, xyxy
CAT_ID = 7


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


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
    graph = helper.make_graph(
        nodes, "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 2, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    if names is not None:
        for k, v in (("names", names), ("stride", "32"), ("imgsz", f"[{SIZE}, {SIZE}]")):
            p = model.metadata_props.add()
            p.key, p.value = k, v
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


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
