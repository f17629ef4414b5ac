"""An ONNX graph, or a slice of its nodes, run by torch: the forward pass that reconstruction
(tasks/quantization/reconstruct.py) differentiates.

Why a converter of our own and not onnx2torch: reconstruction must run the *target's* Q/DQ model,
with its own activation quantizers, and swap each quantized weight for a learnable rounding.
onnx2torch converts float graphs into modules named by its own scheme and turns
QuantizeLinear/DequantizeLinear into nothing it can train through; it also imports torchvision
(absent here) and ran YOLOv5n at 1.6 s per 640x640 image on 2 threads. YOLO exports use some 25
op types; each is one line of the table below, and an op outside it is refused by name before any
work starts.

A Q/DQ pair on an activation runs as fake quantization: `round(x / s) + zp`, clamped to the
integer type, back to float, with a straight-through gradient. Its mode (`quant`, `float`, or
`drop` with a probability: QDrop) is set per forward pass. A Conv whose weight comes from a
DequantizeLinear reads it from `weights` when the caller supplies one (a learnable rounding),
else the integer initializer times its scale, as the runtime computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from tasks.quantization.torch_lazy import F, torch

# ONNX integer types of Q/DQ nodes -> (qmin, qmax)
QRANGE = {onnx.TensorProto.INT8: (-128, 127), onnx.TensorProto.UINT8: (0, 255),
          onnx.TensorProto.INT32: (-2**31, 2**31 - 1)}
_CAST = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32",
         onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BOOL: "bool"}


class UnsupportedOp(ValueError):
    """The graph holds an op type this converter does not run; the message names them."""


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(pads: Sequence[int], x: torch.Tensor, value: float = 0.0) -> tuple[torch.Tensor, list[int] | int]:
    """ONNX pads [t, l, b, r]: symmetric ones go to the op (faster), others padded here first."""
    half = len(pads) // 2
    if list(pads[:half]) == list(pads[half:]):
        return x, list(pads[:half])
    torch_pads: list[int] = []
    for i in reversed(range(half)):
        torch_pads += [pads[i], pads[i + half]]
    return F.pad(x, torch_pads, value=value), 0


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, *, a: dict[str, Any]) -> torch.Tensor:
    x, pad = _pads(a.get("pads", [0] * (2 * (w.dim() - 2))), x)
    conv = F.conv2d if w.dim() == 4 else F.conv1d
    return conv(x, w, b, stride=a.get("strides", 1), padding=pad, dilation=a.get("dilations", 1),
                groups=a.get("group", 1))


def _maxpool(x: torch.Tensor, *, a: dict[str, Any]) -> torch.Tensor:
    x, pad = _pads(a.get("pads", [0, 0, 0, 0]), x, value=float("-inf"))
    return F.max_pool2d(x, a["kernel_shape"], a.get("strides", a["kernel_shape"]), pad,
                        ceil_mode=bool(a.get("ceil_mode", 0)))


def _resize(x: torch.Tensor, roi: Any = None, scales: Any = None, sizes: Any = None, *, a: dict[str, Any]) -> torch.Tensor:
    mode = a.get("mode", b"nearest")
    if mode not in (b"nearest", "nearest"):
        raise UnsupportedOp(f"Resize mode {mode!r}: only nearest is converted")
    # integer up-scaling with ONNX's default nearest rules equals torch's nearest. An export that
    # gives output sizes (YOLOv5) is run by the factor its first, whole-sample call shows, so that a
    # crop of the feature map is scaled like the whole one
    if "_factor" not in a:
        if sizes is not None and sizes.numel():
            a["_factor"] = [int(s) / d for s, d in zip(sizes.tolist()[2:], x.shape[2:])]
        else:
            a["_factor"] = [float(s) for s in scales.tolist()[2:]]
    return F.interpolate(x, scale_factor=a["_factor"], mode="nearest")


def _split(x: torch.Tensor, split: Any = None, *, a: dict[str, Any], n_out: int) -> list[torch.Tensor]:
    axis = a.get("axis", 0)
    sizes = split.tolist() if split is not None else a.get("split")
    if sizes is None:
        sizes = [x.shape[axis] // n_out] * n_out
    return list(torch.split(x, [int(s) for s in sizes], dim=axis))


def _slice(x: torch.Tensor, starts: Any, ends: Any, axes: Any = None, steps: Any = None, *, a: dict[str, Any]) -> torch.Tensor:
    axes_l = axes.tolist() if axes is not None else list(range(len(starts)))
    steps_l = steps.tolist() if steps is not None else [1] * len(axes_l)
    idx: list[slice] = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts.tolist(), ends.tolist(), axes_l, steps_l):
        if st != 1:
            raise UnsupportedOp("Slice with a step other than 1")
        n = x.shape[ax]
        idx[ax] = slice(max(-n, min(int(s), n)), max(-n - 1, min(int(e), n)))
    return x[tuple(idx)]


def _reshape(x: torch.Tensor, shape: torch.Tensor, *, a: dict[str, Any]) -> torch.Tensor:
    dims = [x.shape[i] if d == 0 and not a.get("allowzero", 0) else int(d) for i, d in enumerate(shape.tolist())]
    # a static export writes its batch of 1 into the shape; reconstruction runs batches of several
    if dims and dims[0] == 1 and x.shape[0] != 1:
        dims[0] = x.shape[0]
    return x.reshape(dims)


def _reduce_max(x: torch.Tensor, axes: Any = None, *, a: dict[str, Any]) -> torch.Tensor:
    ax = axes.tolist() if axes is not None else a.get("axes")
    keep = bool(a.get("keepdims", 1))
    if ax is None:
        return x.amax() if not keep else x.amax(dim=tuple(range(x.dim())), keepdim=True)
    return x.amax(dim=tuple(int(i) for i in ax), keepdim=keep)


def _topk(x: torch.Tensor, k: torch.Tensor, *, a: dict[str, Any]) -> list[torch.Tensor]:
    v, i = torch.topk(x, int(k.reshape(-1)[0]), dim=a.get("axis", -1), largest=bool(a.get("largest", 1)),
                      sorted=bool(a.get("sorted", 1)))
    return [v, i]


def _unsqueeze(x: torch.Tensor, axes: Any = None, *, a: dict[str, Any]) -> torch.Tensor:
    ax = sorted(int(i) % (x.dim() + len(axes if axes is not None else a["axes"]))
                for i in (axes.tolist() if axes is not None else a["axes"]))
    for i in ax:
        x = x.unsqueeze(i)
    return x


def _flatten(x: torch.Tensor, *, a: dict[str, Any]) -> torch.Tensor:
    axis = a.get("axis", 1) % max(x.dim(), 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _mod(x: torch.Tensor, y: torch.Tensor, *, a: dict[str, Any]) -> torch.Tensor:
    return torch.fmod(x, y) if a.get("fmod", 0) else torch.remainder(x, y)


def _squeeze(x: torch.Tensor, axes: Any = None, *, a: dict[str, Any]) -> torch.Tensor:
    ax = axes.tolist() if axes is not None else a.get("axes")
    if ax is None:
        return x.squeeze()
    for i in sorted((int(i) % x.dim() for i in ax), reverse=True):
        x = x.squeeze(i)
    return x


def _gemm(x: torch.Tensor, w: torch.Tensor, c: torch.Tensor | None = None, *, a: dict[str, Any]) -> torch.Tensor:
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * (x @ w)
    return y + a.get("beta", 1.0) * c if c is not None else y


# op type -> fn(*inputs, a=attributes); a function whose name takes `n_out` gets the output count
OPS: dict[str, Callable[..., Any]] = {
    "Conv": _conv, "MaxPool": _maxpool, "Resize": _resize, "Split": _split, "Slice": _slice,
    "Reshape": _reshape, "ReduceMax": _reduce_max, "TopK": _topk, "Unsqueeze": _unsqueeze, "Flatten": _flatten,
    "Mod": _mod,
    "Sigmoid": lambda x, *, a: torch.sigmoid(x),
    "Mul": lambda x, y, *, a: x * y, "Add": lambda x, y, *, a: x + y, "Sub": lambda x, y, *, a: x - y,
    "Div": lambda x, y, *, a: x / y if x.is_floating_point() else torch.div(x, y, rounding_mode="trunc"),
    "Pow": lambda x, y, *, a: torch.pow(x, y), "MatMul": lambda x, y, *, a: torch.matmul(x, y),
    "Concat": lambda *xs, a: torch.cat(xs, dim=a["axis"]),
    "Transpose": lambda x, *, a: x.permute(*a["perm"]) if "perm" in a else x.permute(*reversed(range(x.dim()))),
    "Softmax": lambda x, *, a: torch.softmax(x, dim=a.get("axis", -1)),
    "Expand": lambda x, shape, *, a: x * torch.ones([int(s) for s in shape.tolist()], dtype=x.dtype, device=x.device),
    "GatherElements": lambda x, i, *, a: torch.gather(x, a.get("axis", 0), i.long()),
    "Cast": lambda x, *, a: x.to(getattr(torch, _CAST[a["to"]])),
    "Identity": lambda x, *, a: x,
    "Relu": lambda x, *, a: torch.relu(x),
    "GlobalAveragePool": lambda x, *, a: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "Gemm": _gemm,
    "Gather": lambda x, i, *, a: torch.index_select(x, a.get("axis", 0) % x.dim(), i.reshape(-1).long()).reshape(
        x.shape[:a.get("axis", 0) % x.dim()] + i.shape + x.shape[a.get("axis", 0) % x.dim() + 1:]),
    "Squeeze": _squeeze,
}
_MULTI_OUT = {"Split", "TopK"}


@dataclass
class FakeQuant:
    """A Q/DQ pair on one tensor (scale and zero point per tensor, or per channel on `axis`)."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int
    axis: int

    def _shape(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0 or t.numel() == 1:
            return t.reshape(())
        shape = [1] * like.dim()
        shape[self.axis] = -1
        return t.reshape(shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s, zp = self._shape(self.scale, x), self._shape(self.zero_point, x)
        v = x / s
        # straight-through rounding; the clamp passes no gradient outside the integer range
        q = torch.clamp(v + (torch.round(v) - v).detach() + zp, self.qmin, self.qmax)
        return (q - zp) * s


def _qdq_params(node: onnx.NodeProto, inits: dict[str, np.ndarray], const: dict[str, np.ndarray]) -> FakeQuant:
    def val(name: str) -> np.ndarray:
        return inits[name] if name in inits else const[name]

    scale = val(node.input[1]).astype(np.float32)
    zp = val(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    lo, hi = QRANGE[onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)]
    return FakeQuant(torch.from_numpy(np.array(scale)), torch.from_numpy(zp.astype(np.float32)), lo, hi,
                     _attrs(node).get("axis", 1))


@dataclass(frozen=True)
class QuantWeight:
    """A Conv's int8 weight as the target stores it: integers, per-channel scale, and the FP32 weight
    it was rounded from (for the float pass and for learning another rounding)."""

    conv: str  # the Conv node's name
    tensor: str  # the Conv input it feeds (the DequantizeLinear's output)
    initializer: str  # the integer initializer holding it
    q: np.ndarray  # integers (int8), the shape of the weight
    scale: np.ndarray  # per output channel (or one)
    zero_point: np.ndarray
    fp32: np.ndarray
    stored_float: bool = False  # the initializer holds float values behind a Q/DQ pair, not integers
    bias: str | None = None  # the Conv's bias input (float, or int32 behind a DequantizeLinear)
    bias_fp32: np.ndarray | None = None


class GraphRunner:
    """Runs `nodes` (a topologically ordered slice of one graph) on named inputs and returns the
    named outputs. `fp32_weights`: conv name -> FP32 weight, used for each quantized weight in the
    float pass; `weights` (given per call) replaces a quantized weight by another tensor."""

    def __init__(self, graph: onnx.GraphProto, nodes: Sequence[onnx.NodeProto], outputs: Sequence[str],
                 quant_weights: dict[str, QuantWeight] | None = None) -> None:
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        const: dict[str, np.ndarray] = {}
        for n in graph.node:
            if n.op_type == "Constant":
                const[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        unsupported = sorted({n.op_type for n in nodes} - set(OPS) - {"QuantizeLinear", "DequantizeLinear", "Constant"})
        if unsupported:
            raise UnsupportedOp(f"op types the torch converter does not run: {', '.join(unsupported)} "
                                "(tasks/quantization/torch_graph.py OPS)")
        self.outputs = list(outputs)
        self.qw = dict(quant_weights or {})  # by the DQ output tensor name
        by_tensor = {w.tensor: w for w in self.qw.values()}
        producer = {o: n for n in graph.node for o in n.output}
        consumers: dict[str, int] = {}
        for n in graph.node:
            for i in n.input:
                consumers[i] = consumers.get(i, 0) + 1
        self.steps: list[tuple[str, Any, list[str], list[str], dict[str, Any]]] = []
        self.consts: dict[str, torch.Tensor] = {}
        self.fakequant: dict[str, FakeQuant] = {}
        for n in nodes:
            if n.op_type == "Constant":
                self.consts[n.output[0]] = torch.from_numpy(np.array(const[n.output[0]]))
                continue
            if n.op_type == "QuantizeLinear" and all(c.op_type == "DequantizeLinear" for c in graph.node
                                                     if n.output[0] in c.input):
                continue  # runs fused with its DequantizeLinear
            if n.op_type == "DequantizeLinear":
                src = producer.get(n.input[0])
                if n.output[0] in by_tensor:
                    self.steps.append(("weight", None, [], [n.output[0]], {}))
                    continue
                if src is not None and src.op_type == "QuantizeLinear" and src.input[0] in inits:
                    # a float weight behind a Q/DQ pair (not learned): its quantized value, once
                    fq = _qdq_params(n, inits, const)
                    self.consts[n.output[0]] = fq(torch.from_numpy(inits[src.input[0]].astype(np.float32)))
                    continue
                if src is not None and src.op_type == "QuantizeLinear":
                    self.fakequant[n.output[0]] = _qdq_params(n, inits, const)
                    self.steps.append(("fakequant", None, [src.input[0]], [n.output[0]], {}))
                    continue
                # a DQ of a stored integer tensor (a bias, a weight not learned): a constant
                fq = _qdq_params(n, inits, const)
                q = torch.from_numpy(inits[n.input[0]].astype(np.float32))
                self.consts[n.output[0]] = (q - fq._shape(fq.zero_point, q)) * fq._shape(fq.scale, q)
                continue
            if n.op_type == "QuantizeLinear":
                raise UnsupportedOp(f"QuantizeLinear {n.name} without its DequantizeLinear")
            a = _attrs(n)
            self.steps.append((n.op_type, OPS[n.op_type], list(n.input), list(n.output), a))
        for name, arr in inits.items():
            if any(name in s[2] for s in self.steps):
                self.consts[name] = torch.from_numpy(np.array(arr))
        self.fp32_weights = {w.tensor: torch.from_numpy(w.fp32.astype(np.float32)) for w in self.qw.values()}
        # the float pass reads FP32 biases where the target stores them quantized (int32)
        self.fp32_consts = {w.bias: torch.from_numpy(w.bias_fp32.astype(np.float32)) for w in self.qw.values()
                            if w.bias is not None and w.bias_fp32 is not None and w.bias in self.consts}
        self.stored_weights = {w.tensor: torch.from_numpy(((w.q.astype(np.float32) - _per_channel(w.zero_point, w.q))
                                                          * _per_channel(w.scale, w.q)).astype(np.float32))
                               for w in self.qw.values()}
        produced = {o for s in self.steps for o in s[3]} | set(self.consts)
        self.inputs = sorted({i for s in self.steps for i in s[2] if i and i not in produced})

    def to_device(self, device: torch.device) -> "GraphRunner":
        """Every constant, weight and quantizer parameter onto `device` (CUDA when torch sees a GPU)."""
        for d in (self.consts, self.fp32_weights, self.stored_weights, self.fp32_consts):
            for k, v in d.items():
                d[k] = v.to(device)
        for fq in self.fakequant.values():
            fq.scale, fq.zero_point = fq.scale.to(device), fq.zero_point.to(device)
        return self

    def __call__(self, feeds: dict[str, torch.Tensor], mode: str = "quant", drop: float = 0.0,
                weights: dict[str, torch.Tensor] | None = None, fp_feeds: dict[str, torch.Tensor] | None = None
                ) -> dict[str, torch.Tensor]:
        """mode: quant (the target's arithmetic), float (Q/DQ as identity, FP32 weights), drop (QDrop:
        each activation element keeps its float value with probability `drop`)."""
        env: dict[str, Any] = dict(self.consts)
        env.update(feeds)
        if mode == "float":
            env.update(self.fp32_consts)
        if weights:  # other tensors (a learned bias) replace constants by name
            env.update({t: v for t, v in weights.items() if t in self.consts})
        for kind, fn, ins, outs, a in self.steps:
            if kind == "weight":
                t = outs[0]
                env[t] = (self.fp32_weights[t] if mode == "float"
                          else weights[t] if weights is not None and t in weights else self.stored_weights[t])
            elif kind == "fakequant":
                x = env[ins[0]]
                if mode == "float":
                    env[outs[0]] = x
                    continue
                y = self.fakequant[outs[0]](x)
                if mode == "drop" and drop > 0:
                    y = torch.where(torch.rand_like(x) < drop, x, y)
                env[outs[0]] = y
            else:
                args = [env[i] if i else None for i in ins]
                res = fn(*args, a=a, n_out=len(outs)) if kind == "Split" else fn(*args, a=a)
                if kind in _MULTI_OUT:
                    for o, r in zip(outs, res):
                        env[o] = r
                else:
                    env[outs[0]] = res
        return {o: env[o] for o in self.outputs}


def _per_channel(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v.reshape((-1,) + (1,) * (like.ndim - 1)) if v.size > 1 else v.reshape(())


def quant_weights(qmodel: onnx.ModelProto, fp32: onnx.ModelProto) -> dict[str, QuantWeight]:
    """Every Conv weight of a Q/DQ model stored as integers behind a DequantizeLinear, with the FP32
    weight of the same Conv (by node name) in the FP32 model. Keyed by conv name."""
    inits = {i.name: i for i in qmodel.graph.initializer}
    fp_inits = {i.name: i for i in fp32.graph.initializer}
    fp_conv = {n.name: n for n in fp32.graph.node if n.op_type == "Conv"}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    out: dict[str, QuantWeight] = {}
    for n in qmodel.graph.node:
        if n.op_type != "Conv" or n.name not in fp_conv or len(n.input) < 2:
            continue
        dq = producer.get(n.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        fw = fp_conv[n.name].input[1]
        if fw not in fp_inits:
            continue
        zp = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.int8)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
        qn = producer.get(dq.input[0])
        if dq.input[0] in inits:  # int8 stored (dq_only, ORT)
            stored, q = dq.input[0], numpy_helper.to_array(inits[dq.input[0]])
        elif qn is not None and qn.op_type == "QuantizeLinear" and qn.input[0] in inits:
            # a float weight behind a Q/DQ pair: its integers as QuantizeLinear computes them (half to even)
            stored = qn.input[0]
            wf = numpy_helper.to_array(inits[stored]).astype(np.float32)
            lo, hi = QRANGE[onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)]
            shp = (-1,) + (1,) * (wf.ndim - 1) if scale.size > 1 else ()
            q = np.clip(np.round(wf / scale.reshape(shp)) + zp.astype(np.float32).reshape(shp), lo, hi).astype(zp.dtype)
        else:
            continue
        fb = fp_conv[n.name].input[2] if len(fp_conv[n.name].input) > 2 else ""
        has_bias = len(n.input) > 2 and bool(n.input[2]) and fb in fp_inits
        out[n.name] = QuantWeight(conv=n.name, tensor=n.input[1], initializer=stored, q=q, scale=scale,
                                  stored_float=stored != dq.input[0],
                                  zero_point=zp, fp32=numpy_helper.to_array(fp_inits[fw]),
                                  bias=n.input[2] if has_bias else None,
                                  bias_fp32=numpy_helper.to_array(fp_inits[fb]) if has_bias else None)
    return out


def whole_graph(model: onnx.ModelProto, quant_weights_: dict[str, QuantWeight] | None = None) -> GraphRunner:
    """The whole model (every output of its graph)."""
    return GraphRunner(model.graph, list(model.graph.node), [o.name for o in model.graph.output],
                       {w.tensor: w for w in (quant_weights_ or {}).values()})


def check_supported(model: onnx.ModelProto, ignore: Iterable[str] = ()) -> list[str]:
    """Op types of `model` outside the converter's table (empty when every node converts)."""
    return sorted({n.op_type for n in model.graph.node} - set(OPS) - {"QuantizeLinear", "DequantizeLinear", "Constant"}
                  - set(ignore))
