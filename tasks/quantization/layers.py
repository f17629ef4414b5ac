"""Per-layer view of a Q/DQ model: which layers run in INT8, what each costs in MACs, and graph
surgery that puts single layers back in float without re-calibrating.

A *layer* is a quantizable node (Conv, ConvTranspose, MatMul, Gemm) whose data input reads a
DequantizeLinear: one convolution with its input and weight Q/DQ, or one attention MatMul. The same
definition serves both targets: ModelOpt's `tensorrt` model (Q/DQ on layer inputs only) and the
`ort-cpu` model (Q/DQ on every activation, int8 weights stored with a DequantizeLinear only).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnx

from tasks.quantization.graph import consumer_map, producer_map
from tasks.quantization.probe import tensor_session
from tasks.quantization.modelopt_ptq import QUANTIZABLE_OPS, ort_optimized_graph


def quantized_layers(qmodel: onnx.ModelProto) -> list[str]:
    """Names of the layers that compute in INT8, in graph order: every data input (a Conv's input
    and weight, both inputs of a MatMul) reads a DequantizeLinear. An excluded layer of the ort-cpu
    model still reads its quantized neighbour's DQ output but keeps a float weight: not a layer."""
    prod = producer_map(qmodel)

    def dq(name: str) -> bool:
        p = prod.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    return [n.name for n in qmodel.graph.node if n.op_type in QUANTIZABLE_OPS and len(n.input) >= 2
            and dq(n.input[0]) and dq(n.input[1])]


def layer_macs(model: onnx.ModelProto) -> dict[str, int]:
    """Multiply-accumulates of every Conv/ConvTranspose/MatMul/Gemm of a (float) model, from ONNX
    shape inference; a node whose shapes cannot be inferred counts 0."""
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    out: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type not in QUANTIZABLE_OPS:
            continue
        try:
            if n.op_type in ("Conv", "ConvTranspose"):
                # every output element (Conv) or input element (ConvTranspose) costs Cin/g*kh*kw (Cout/g*kh*kw)
                w = shapes[n.input[1]]
                spatial = shapes[n.output[0]] if n.op_type == "Conv" else shapes[n.input[0]]
                out[n.name] = int(np.prod(spatial)) * int(np.prod(w[1:]))
            else:  # MatMul / Gemm: output elements x the reduced dimension
                a, y = shapes[n.input[0]], shapes[n.output[0]]
                trans_a = any(at.name == "transA" and at.i for at in n.attribute)
                out[n.name] = int(np.prod(y)) * int(a[0] if trans_a else a[-1])
        except (KeyError, IndexError):
            out[n.name] = 0
    return out


def conv_mac_share(int8_convs: Iterable[str], macs: dict[str, int], conv_names: Iterable[str]) -> float:
    """Share of all convolution MACs that run in INT8."""
    conv_names = list(conv_names)
    total = sum(macs.get(c, 0) for c in conv_names)
    done = sum(macs.get(c, 0) for c in set(int8_convs) if c in set(conv_names))
    return round(done / total, 4) if total else 0.0


def convs_of(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")]


def qdq_int8_convs(qmodel: onnx.ModelProto) -> list[str]:
    """tensorrt: convolutions with a DequantizeLinear on both the input and the weight."""
    kinds = {n.name: n.op_type for n in qmodel.graph.node}
    return [n for n in quantized_layers(qmodel) if kinds[n] in ("Conv", "ConvTranspose")]


def ort_int8_convs(model_path: Path) -> list[str]:
    """ort-cpu: the convolutions ONNX Runtime's CPU EP runs as QLinearConv."""
    return [n.name for n in ort_optimized_graph(model_path).graph.node if n.op_type == "QLinearConv"]


def _init_map(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {i.name: i for i in model.graph.initializer}


def _prune(model: onnx.ModelProto) -> None:
    """Drop Q/DQ nodes nobody reads any more, then initializers nobody reads."""
    outputs = {o.name for o in model.graph.output}
    changed = True
    while changed:
        used = {i for n in model.graph.node for i in n.input} | outputs
        keep = [n for n in model.graph.node
                if n.op_type not in ("QuantizeLinear", "DequantizeLinear") or any(o in used for o in n.output)]
        changed = len(keep) != len(model.graph.node)
        if changed:
            del model.graph.node[:]
            model.graph.node.extend(keep)
    used = {i for n in model.graph.node for i in n.input}
    keep_init = [i for i in model.graph.initializer if i.name in used]
    if len(keep_init) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep_init)


_ACTIVATIONS = ("Sigmoid", "Mul", "Relu", "Clip", "LeakyRelu", "HardSwish", "HardSigmoid", "Tanh")


def _through_qdq(name: str, prod: dict[str, onnx.NodeProto]) -> str:
    """The float tensor behind a DequantizeLinear(QuantizeLinear(t)) chain, else `name` itself."""
    p = prod.get(name)
    if p is not None and p.op_type == "DequantizeLinear":
        q = prod.get(p.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            return q.input[0]
    return name


def layer_group(qmodel: onnx.ModelProto, layer: str) -> list[str]:
    """The layer and the activation that follows it (SiLU = Sigmoid and Mul; Relu ...), seen through
    Q/DQ: on the ort-cpu model its pre-activation output and the Sigmoid output are quantized too, and
    putting the layer in float means computing that whole group in float (its output stays
    quantized for the next layer)."""
    prod, cons = producer_map(qmodel), consumer_map(qmodel)
    inits = {i.name for i in qmodel.graph.initializer}
    nodes = {n.name: n for n in qmodel.graph.node}
    members = [layer]
    inside = set(nodes[layer].output)
    grew = True
    while grew:
        grew = False
        frontier = set(inside)
        for t in frontier:
            readers = list(cons.get(t, []))
            for r in list(readers):  # look through the Q -> DQ that ort-cpu puts on the tensor
                if r.op_type == "QuantizeLinear":
                    readers += [d for d in cons.get(r.output[0], []) if d.op_type == "DequantizeLinear"]
            for r in readers:
                if r.op_type == "DequantizeLinear":
                    readers += cons.get(r.output[0], [])
            for r in readers:
                if r.op_type not in _ACTIVATIONS or r.name in members or not r.name:
                    continue
                srcs = [_through_qdq(i, prod) for i in r.input if i and i not in inits]
                if srcs and all(s in inside for s in srcs):
                    members.append(r.name)
                    inside.update(r.output)
                    grew = True
    return members


def _feeds_producer_kernel(q: onnx.NodeProto, dq: onnx.NodeProto, groups: set[str],
                           prod: dict[str, onnx.NodeProto], cons: dict[str, list[onnx.NodeProto]]) -> bool:
    """True when this Q/DQ is the quantized *output* of a convolution (through a Relu-like op ORT
    fuses with it) that only the float group reads: removing it would turn that INT8 convolution
    (QLinearConv needs its output quantized) into a float one, so the group reads it quantized."""
    if any(c.name not in groups for c in cons.get(dq.output[0], [])):
        return False  # others read it anyway: the float group may take the float tensor for free
    src = prod.get(q.input[0])
    while src is not None and src.op_type in ("Relu", "Clip", "LeakyRelu"):
        src = prod.get(src.input[0])
    return src is not None and src.op_type in ("Conv", "ConvTranspose") and src.name not in groups


def exclude_layers(qmodel: onnx.ModelProto, fp32: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `qmodel` in which the named layers, with their activations, compute in float.

    Every input of the layer that reads a DequantizeLinear reads the float tensor instead (an
    activation: the QuantizeLinear's input; a stored int8 weight or int32 bias: the FP32 model's
    initializer of the same layer); inside the layer's group (`layer_group`) the Q/DQ between the
    layer and its activation are skipped. The group's output keeps its Q/DQ and every other consumer
    of a Q/DQ keeps reading it; Q/DQ nodes left unread are removed. All other scales are unchanged:
    the result is "this PTQ, with these layers in float"."""
    m = copy.deepcopy(qmodel)
    prod = producer_map(m)
    inits = _init_map(m)
    fp_nodes = {n.name: n for n in fp32.graph.node}
    fp_inits = _init_map(fp32)
    wanted = list(dict.fromkeys(names))
    missing = set(wanted) - {n.name for n in m.graph.node}
    if missing:
        raise ValueError(f"layer(s) {sorted(missing)[:3]} are not in the quantized model")
    groups = {g for layer in wanted for g in layer_group(m, layer)}
    cons = consumer_map(m)
    added: dict[str, onnx.TensorProto] = {}
    for n in m.graph.node:
        if n.name not in groups:
            continue
        for i, name in enumerate(n.input):
            dq = prod.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = prod.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                if _feeds_producer_kernel(q, dq, groups, prod, cons):
                    continue
                n.input[i] = q.input[0]
            elif dq.input[0] in inits:  # stored quantized weight/bias: take the FP32 layer's own
                ref = fp_nodes.get(n.name)
                if ref is None or i >= len(ref.input) or ref.input[i] not in fp_inits:
                    raise ValueError(f"layer {n.name}: no float initializer for input {i} in the FP32 model")
                src = fp_inits[ref.input[i]]
                fname = f"{src.name}__float"
                if fname not in added and fname not in inits:
                    t = copy.deepcopy(src)
                    t.name = fname
                    added[fname] = t
                n.input[i] = fname
    m.graph.initializer.extend(added.values())
    _prune(m)
    while _float_reads_float(m, groups):  # a Q/DQ removed downstream can make an upstream one float-only
        _prune(m)
    return m


def _float_reads_float(m: onnx.ModelProto, groups: set[str]) -> bool:
    """After a group went to float, its output's Q/DQ stays only for readers that compute in INT8:
    a reader that is not an INT8 layer and whose own output is not quantized (the decode after a
    head convolution) reads the float tensor, as if the quantizer had never quantized the group.
    (ORT's CPU EP quantizes the float weight of a convolution that has DQ on its input and Q on
    its output by itself, so a float layer must not be left between the two.) True if it rewired."""
    cons = consumer_map(m)
    int8 = set(quantized_layers(m))
    outs = {o for n in m.graph.node if n.name in groups for o in n.output}
    changed = False
    for t in outs:
        for q in [c for c in cons.get(t, []) if c.op_type == "QuantizeLinear"]:
            for dq in [d for d in cons.get(q.output[0], []) if d.op_type == "DequantizeLinear"]:
                for r in cons.get(dq.output[0], []):
                    quantized_out = any(c.op_type == "QuantizeLinear" for o in r.output for c in cons.get(o, []))
                    if r.name in int8 or quantized_out or r.op_type in ("QuantizeLinear", "DequantizeLinear"):
                        continue
                    for i, name in enumerate(r.input):
                        if name == dq.output[0]:
                            r.input[i] = t
                            changed = True
    return changed


# ---------------------------------------------------------------------------------------------
# local view: each quantized layer run on the FP32 model's own input, with its Q/DQ

def local_branches(fp32: onnx.ModelProto, qmodel: onnx.ModelProto, layers: Sequence[str] | None = None
                   ) -> tuple[onnx.ModelProto, list[dict[str, str]]]:
    """The FP32 model plus, for every quantized layer, a copy of that layer's group (`layer_group`)
    that reads the FP32 model's tensors through the layer's own Q/DQ (same scales, same stored
    weights): what quantizing this layer alone does, free of upstream error (as NNCF's fast bias
    correction measures it). Returns the model and, per layer, the FP32 and local INT8 names of
    the layer's output (`out`, `out_q`) and of its group's output as the next layer reads it
    (`group`, `group_q`)."""
    m = copy.deepcopy(fp32)
    prod = producer_map(qmodel)
    qinits = _init_map(qmodel)
    fp_names = {n.name: n for n in m.graph.node}
    fp_tensors = {o for n in m.graph.node for o in n.output} | {i.name for i in m.graph.input} | \
        {i.name for i in m.graph.initializer}
    copied: set[str] = set()
    new_nodes: list[onnx.NodeProto] = []
    rows = []

    def take_init(name: str) -> str:
        if name in fp_tensors:  # same name in both: the same float tensor (ModelOpt keeps weights)
            return name
        new = name + "__local"
        if new not in copied:
            t = copy.deepcopy(qinits[name])
            t.name = new
            m.graph.initializer.append(t)
            copied.add(new)
        return new

    def attrs(n: onnx.NodeProto) -> dict[str, Any]:
        return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}

    def mirror(name: str, members: set[str], tag: str) -> str | None:
        p = prod.get(name)
        if p is None:
            return take_init(name) if name in qinits else (name if name in fp_tensors else None)
        if p.op_type not in ("QuantizeLinear", "DequantizeLinear") and p.name not in members:
            return name if name in fp_tensors else None
        out = name + tag
        if out not in copied:
            ins = [mirror(i, members, tag) if i else "" for i in p.input]
            if any(i is None for i in ins):
                return None
            new_nodes.append(onnx.helper.make_node(p.op_type, ins, [o + tag for o in p.output],
                                                   name=p.name + tag, **attrs(p)))
            copied.update(o + tag for o in p.output)
        return out

    cons = consumer_map(qmodel)
    qnodes = {n.name: n for n in qmodel.graph.node}
    for k, name in enumerate(layers if layers is not None else quantized_layers(qmodel)):
        ref = fp_names.get(name)
        if ref is None:
            continue
        members = layer_group(qmodel, name)
        mset, tag = set(members), f"__l{k}"
        out_q = mirror(qnodes[name].output[0], mset, tag)
        group_t = qnodes[members[-1]].output[0]
        # the group's output as the next layer reads it: through its Q/DQ when it has one
        q = [c for c in cons.get(group_t, []) if c.op_type == "QuantizeLinear"]
        dq = [d for d in cons.get(q[0].output[0], []) if d.op_type == "DequantizeLinear"] if q else []
        group_q = mirror(dq[0].output[0] if dq else group_t, mset, tag)
        if out_q is None or group_q is None or group_t not in fp_tensors:
            continue
        rows.append({"layer": name, "out": ref.output[0], "out_q": out_q, "group": group_t, "group_q": group_q,
                     "members": members})
    m.graph.node.extend(new_nodes)
    return m, rows


def local_stats(fp32: onnx.ModelProto, qmodel: onnx.ModelProto, samples: Iterable[np.ndarray], input_name: str,
                threads: int | None = None) -> dict[str, dict[str, Any]]:
    """For every quantized layer, over the samples (one session, one pass), `nsr`: the noise-to-signal
    ratio of its group's output (per channel: sum of squared error over sum of squares of FP32's, then
    the mean over channels), what quantizing this layer alone costs where the next layer reads it;
    and `group`, the layers of that group."""
    model, rows = local_branches(fp32, qmodel)
    if not rows:
        return {}
    names = list(dict.fromkeys(t for r in rows for t in (r["group"], r["group_q"])))
    sess = tensor_session(model, names, threads)  # model: local_branches' own copy
    acc: dict[str, dict[str, Any]] = {r["layer"]: {"err": 0.0, "sig": 0.0} for r in rows}
    for x in samples:
        outs = dict(zip(names, sess.run(names, {input_name: np.ascontiguousarray(x, dtype=np.float32)})))
        for r in rows:
            a = acc[r["layer"]]
            ref = outs[r["group"]].astype(np.float64)
            e = ref - outs[r["group_q"]].astype(np.float64)
            axes = tuple(i for i in range(e.ndim) if i != 1)
            a["err"] = a["err"] + ((e * e).sum(axis=axes) if e.ndim > 1 else e * e)
            a["sig"] = a["sig"] + ((ref * ref).sum(axis=axes) if ref.ndim > 1 else ref * ref)
    return {r["layer"]: {"nsr": _channel_nsr(acc[r["layer"]]), "group": r["members"]} for r in rows}


def _channel_nsr(a: dict[str, Any]) -> float:
    """Mean over output channels of squared error over squared signal: a YOLO head concatenates
    box coordinates in the hundreds with score logits of a few units, and a whole-tensor ratio
    would hide a ruined small channel behind the large ones. Channels whose energy is under a
    millionth of the largest channel's are dead for this purpose: floored there, they count ~0."""
    err, sig = np.atleast_1d(np.asarray(a["err"], dtype=np.float64)), np.atleast_1d(np.asarray(a["sig"], dtype=np.float64))
    if sig.sum() <= 0:
        return 0.0
    return float(np.mean(err / np.maximum(sig, 1e-6 * sig.max())))
