"""Who writes and who reads each tensor of an ONNX graph: the two maps every graph rewrite here starts from."""

from __future__ import annotations

import onnx


def producer_map(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """tensor name -> the node that writes it (graph inputs and initializers have none)."""
    return {o: n for n in model.graph.node for o in n.output}


def consumer_map(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """tensor name -> the nodes that read it, in graph order (a node reading it twice is listed twice)."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out
