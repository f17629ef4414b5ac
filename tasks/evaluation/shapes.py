"""Dynamic-shape exports (Ultralytics `dynamic=True`: batch, height and width symbolic): the size a
run uses, the static copy every step measures, and the export's dynamic axes put back on an INT8
ONNX model, checked by running it.

Why a static copy: the project's statistics (convolution MACs, per-layer noise, histogram passes)
and the quantizers see the same graph a static export at that size would give, so a dynamic export
quantizes exactly like its static twin; only the shipped model's declared input and output shapes
differ, and those are restored where the model still runs at other sizes."""

from __future__ import annotations

import ast
import copy
from typing import Any, Callable, Sequence

import numpy as np
import onnx

Dim = int | str | None


class ShapeError(ValueError):
    """The export's input size cannot be settled (dynamic with no imgsz, or an imgsz it cannot take)."""


def graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {i.name for i in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in inits)


def declared_dims(v: onnx.ValueInfoProto) -> list[Dim]:
    """A graph input's or output's declared dims: an int, a symbolic name, or None where unknown."""
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in v.type.tensor_type.shape.dim]


def dynamic_axes(model: onnx.ModelProto) -> dict[str, list[Dim]]:
    """{input or output name: its declared dims} when the image input has a symbolic or unknown
    dimension, else {} (a static export)."""
    inp = graph_input(model)
    if all(isinstance(d, int) and d > 0 for d in declared_dims(inp)):
        return {}
    return {v.name: declared_dims(v) for v in (inp, *model.graph.output)}


def metadata_imgsz(model: onnx.ModelProto) -> tuple[int, int] | None:
    """Ultralytics' `imgsz` metadata ("[640, 640]" or "640") as (height, width), if the export has it."""
    raw = {p.key: p.value for p in model.metadata_props}.get("imgsz")
    try:
        v = ast.literal_eval(raw) if raw else None
    except (ValueError, SyntaxError):
        return None
    if isinstance(v, int):
        v = [v, v]
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and x > 0 for x in v):
        return int(v[0]), int(v[1])
    return None


def model_stride(model: onnx.ModelProto) -> int:
    """Ultralytics' `stride` metadata (the largest feature-map stride: 64 for P6 models), else 32."""
    raw = {p.key: p.value for p in model.metadata_props}.get("stride", "32")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 32


def resolve_hw(model: onnx.ModelProto, dims: Sequence[Dim], imgsz: Sequence[int] | None) -> tuple[tuple[int, int], str]:
    """(height, width) the run uses, and where it came from. A static input's own size wins (an
    `imgsz` that differs is refused); a dynamic one takes `imgsz`, else the export's metadata."""
    name = graph_input(model).name
    want = None if not imgsz else (int(imgsz[0]), int(imgsz[-1]))
    h, w = dims[2], dims[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
        if want is not None and want != (h, w):
            raise ShapeError(f"--imgsz {want[0]} {want[1]} but input {name!r} is static {h}x{w}; drop --imgsz or "
                             f"re-export at that size (Ultralytics: imgsz={want[0]})")
        return (h, w), "the export's static input"
    if want is not None:
        hw, how = want, "--imgsz"
    else:
        hw_meta = metadata_imgsz(model)
        if hw_meta is None:
            raise ShapeError(f"input {name!r} has dynamic height/width {list(dims)} and the export records no imgsz; "
                             f"pass --imgsz H W (the size it was trained at, e.g. --imgsz 640)")
        hw, how = hw_meta, "the export's imgsz metadata"
    s = model_stride(model)
    if hw[0] % s or hw[1] % s or min(hw) <= 0:
        raise ShapeError(f"imgsz {hw[0]}x{hw[1]} ({how}) is not a positive multiple of the model's stride {s}; "
                         f"pass --imgsz with multiples of {s}")
    return hw, how


def dynamic_record(model: onnx.ModelProto, imgsz: Sequence[int] | None) -> dict[str, Any]:
    """What a run records of a dynamic-shape export (its axes, where its size came from, its
    stride); {} for a static export. The size itself is `resolve_hw`'s, checked before this."""
    axes = dynamic_axes(model)
    if not axes:
        return {}
    _, how = resolve_hw(model, axes[graph_input(model).name], imgsz)
    return {"dynamic_axes": axes, "size_from": how, "metadata_imgsz": metadata_imgsz(model),
            "stride": model_stride(model)}


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort  # heavy: loaded when used, not on --help

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {graph_input(model).name: x})


def _set_dims(v: onnx.ValueInfoProto, dims: Sequence[Dim]) -> None:
    shape = v.type.tensor_type.shape
    shape.ClearField("dim")
    for d in dims:
        nd = shape.dim.add()
        if isinstance(d, int) and d > 0:
            nd.dim_value = d
        elif d:
            nd.dim_param = str(d)


def pin(model: onnx.ModelProto, shape: Sequence[int]) -> onnx.ModelProto:
    """A copy with the image input fixed at `shape` and each output at the shape it then has (one
    inference on zeros measures them: shape inference cannot see through YOLOv10's TopK)."""
    out = copy.deepcopy(model)
    _set_dims(graph_input(out), shape)
    del out.graph.value_info[:]  # inferred for the symbolic dims
    ys = _run(out, np.zeros(tuple(shape), np.float32))
    for o, y in zip(out.graph.output, ys):
        _set_dims(o, y.shape)
    return out


def restore_axes(model: onnx.ModelProto, axes: dict[str, list[Dim]]) -> onnx.ModelProto:
    """A copy whose input and outputs declare the export's dims again (`dynamic_axes` of the source)."""
    out = copy.deepcopy(model)
    for v in (graph_input(out), *out.graph.output):
        if v.name in axes:
            _set_dims(v, axes[v.name])
    del out.graph.value_info[:]  # inferred on the static copy: stale for other sizes
    return out


def other_shape(axes: dict[str, list[Dim]], input_name: str, shape: Sequence[int], stride: int = 32) -> tuple[int, ...]:
    """Another input shape the export's axes allow: batch 2 where batch is dynamic, and each dynamic
    side two strides smaller (never below one stride)."""
    dims = axes[input_name]
    b, c, h, w = shape
    dyn = [not (isinstance(d, int) and d > 0) for d in dims]
    return (2 if dyn[0] else b, c, max(h - 2 * stride, stride) if dyn[2] else h, max(w - 2 * stride, stride) if dyn[3] else w)


def judge_restored(run_pinned: Callable[[np.ndarray], list[np.ndarray]],
                   run_restored: Callable[[np.ndarray], list[np.ndarray]], axes: dict[str, list[Dim]],
                   input_name: str, sample: np.ndarray, stride: int = 32) -> dict[str, Any]:
    """Does a model with the export's axes put back keep them? At the run's size it must give the
    pinned model's outputs (to float rounding: a runtime may pick other kernels for a dynamic shape),
    and it must run at another shape its axes allow. Returns the record: `kept` and, when not, why
    (the caller then ships the pinned model). The runners are a runtime's: ORT's, OpenVINO's."""
    probe = other_shape(axes, input_name, sample.shape, stride)
    try:
        diff = max(float(np.max(np.abs(a - b))) if a.size else 0.0
                   for a, b in zip(run_pinned(sample), run_restored(sample)))
        if not diff <= 1e-3:
            return {"kept": False, "reason": f"with the export's axes the outputs at the run's size differ "
                                             f"(max abs difference {diff:g})"}
        ys = run_restored(np.zeros(probe, np.float32))
    except Exception as e:  # onnx, ORT and OpenVINO raise many kinds; the reason is recorded, the pinned model shipped
        return {"kept": False, "reason": f"with the export's axes it does not run at {list(probe)}: "
                                         f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"}
    return {"kept": True, "axes": axes, "checked_at": [list(sample.shape), list(probe)],
            "outputs_at_other_shape": [list(y.shape) for y in ys], "max_abs_diff_at_run_size": diff}


def check_restored(pinned: onnx.ModelProto, restored: onnx.ModelProto, axes: dict[str, list[Dim]],
                   sample: np.ndarray, stride: int = 32) -> dict[str, Any]:
    """`judge_restored` for an ONNX model on ONNX Runtime's CPU EP."""
    try:
        onnx.checker.check_model(restored)
    except Exception as e:  # onnx.checker raises ValidationError and protobuf errors
        return {"kept": False, "reason": f"with the export's axes the model fails onnx.checker: {str(e)[:200]}"}
    return judge_restored(lambda x: _run(pinned, x), lambda x: _run(restored, x), axes, graph_input(pinned).name,
                          sample, stride)
