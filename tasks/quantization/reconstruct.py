"""Reconstruction: label-free weight rounding learned block by block on the calibration samples, so
that each block of a target's Q/DQ model reproduces the FP32 block's outputs with the target's own
activation quantizers in the forward pass.

- BRECQ (Li et al., ICLR 2021): the unit is a block of `convs_per_block` consecutive convolutions;
  its inputs come from the already reconstructed quantized model, its targets from the FP32 model.
- AdaRound (Nagel et al., ICML 2020): each weight rounds down or up, learned through a rectified
  sigmoid with an annealed regulariser that drives it to 0 or 1; weights stay on the int8 grid of
  the *unchanged* per-channel scales.
- QDrop (Wei et al., ICLR 2022): while learning, each activation element skips its quantizer with
  probability `drop`, so the rounding fits a flatter neighbourhood than one calibration set's.

The elements at a channel's largest magnitude keep their value, so the target's quantizer derives
the same per-channel scale from the adapted weights (max-abs / 127) and the same integers.
Activation scales, Q/DQ placement and biases are unchanged: the output differs from the input model
in the integers of the learned weights only.

Memory stays flat in the sample count: each stream's live tensors are fp16 memory maps on disk, and
a block reads one batch of them at a time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from tasks.quantization.torch_graph import GraphRunner, QuantWeight, quant_weights
from tasks.quantization.torch_lazy import torch

# AdaRound's rectified sigmoid stretch and its regulariser's schedule (the paper's values)
ZETA, GAMMA = 1.1, -0.1
BETA_START, BETA_END, WARMUP = 20.0, 2.0, 0.2
ROUND_WEIGHT = 0.01  # BRECQ's weight of the rounding regulariser against the reconstruction loss
FILL_BATCH = 4  # samples per forward pass when a block's outputs are stored
CHECK_SAMPLES = 16  # samples on which learned and round-to-nearest rounding are compared
# ops whose output element depends only on a window of its input: a block made of these alone may
# learn on crops of its feature maps
LOCAL_OPS = {"Conv", "Sigmoid", "Mul", "Add", "Sub", "Div", "Pow", "Concat", "MaxPool", "Resize", "Split",
             "Identity", "weight", "fakequant"}


@dataclass(frozen=True)
class Settings:
    """What reconstruction costs and how it learns (tasks/config.py ReconstructionSettings fills it)."""

    samples: int = 64  # calibration samples it learns on
    iters: int = 1000  # optimizer steps per block
    batch: int = 4  # crops (or whole samples) per step
    crop: int = 256  # crop side in input pixels; 0: whole samples
    convs_per_block: int = 4
    drop: float = 0.5  # QDrop's probability; 0: AdaRound/BRECQ with every quantizer on
    lr: float = 1e-2  # Adam's step on the rounding variables
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"


@dataclass
class Block:
    index: int
    nodes: list[onnx.NodeProto]
    convs: list[str]  # learned convolutions, by node name
    outputs: list[str]
    runner: GraphRunner | None = None
    local: bool = True


@dataclass
class Record:
    blocks: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    changed: int = 0
    weights: int = 0


def plan_blocks(qmodel: onnx.ModelProto, learn: dict[str, QuantWeight], convs_per_block: int) -> list[Block]:
    """Cut the graph into blocks of `convs_per_block` learned convolutions, in graph order.

    Each node joins the latest block its inputs come from (a learned conv: its own). An activation
    Q/DQ pair joins the block of its first consumer, so a block's outputs are taken before the next
    block's quantizer. Nodes that no learned convolution depends on (the decode after the head) are
    left out: the last block's outputs are the tensors they read."""
    g = qmodel.graph
    conv_order = [n.name for n in g.node if n.name in learn]
    conv_block = {c: i // convs_per_block for i, c in enumerate(conv_order)}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def is_fakequant(n: onnx.NodeProto) -> bool:
        if n.op_type == "QuantizeLinear":
            return True
        src = producer.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        return src is not None and src.op_type == "QuantizeLinear"

    # nodes computed from initializers alone (weights, biases behind a DequantizeLinear, constants)
    # travel with each block that reads them
    static_t = {i.name for i in g.initializer}
    static: set[str] = set()
    for n in g.node:
        if all(i in static_t for i in n.input if i):
            static.add(n.name)
            static_t.update(n.output)
    # nodes upstream of a learned conv (the rest is the tail)
    needed: set[str] = set()
    stack = [n for n in g.node if n.name in learn]
    while stack:
        n = stack.pop()
        if n.name in needed:
            continue
        needed.add(n.name)
        stack += [producer[i] for i in n.input if i in producer]
    tensor_block: dict[str, int] = {}
    node_block: dict[str, int] = {}
    for n in g.node:  # graph order is topological
        if n.name not in needed or n.name in static:
            continue
        b = max([tensor_block.get(i, 0) for i in n.input if i in producer] + [0])
        if n.name in conv_block:
            b = max(b, conv_block[n.name])
        node_block[n.name] = b
        for o in n.output:
            tensor_block[o] = b
    # a quantizer moves forward to its consumers' block (never behind its producer's)
    for n in reversed(g.node):
        if n.name in node_block and is_fakequant(n):
            later = [node_block[c.name] for o in n.output for c in consumers.get(o, []) if c.name in node_block]
            if later:
                node_block[n.name] = max(node_block[n.name], min(later))
                for o in n.output:
                    tensor_block[o] = node_block[n.name]
    count = max(node_block.values(), default=-1) + 1
    blocks = [Block(i, [], [], []) for i in range(count)]
    for n in g.node:
        if n.name in node_block:
            blocks[node_block[n.name]].nodes.append(n)
        elif n.name in static:
            used = {node_block[c.name] for o in n.output for c in consumers.get(o, []) if c.name in node_block}
            for b in sorted(used):
                blocks[b].nodes.append(n)
    graph_outputs = {o.name for o in g.output}
    for blk in blocks:
        blk.convs = [n.name for n in blk.nodes if n.name in conv_block]
        produced = [o for n in blk.nodes if n.name in node_block for o in n.output]
        blk.outputs = [t for t in produced
                       if t in graph_outputs or any(node_block.get(c.name, count) != blk.index
                                                    for c in consumers.get(t, []))]
        blk.local = all(n.op_type in LOCAL_OPS or n.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant")
                        for n in blk.nodes)
    return [b for b in blocks if b.convs]


class Rounding:
    """AdaRound's learnable rounding of one weight on its fixed per-channel grid."""

    def __init__(self, w: QuantWeight) -> None:
        scale = _channel(w.scale, w.fp32)
        v = w.fp32.astype(np.float32) / scale
        q_near = w.q.astype(np.float32)
        # the largest magnitude per channel (per tensor for a per-tensor scale)
        limit = (np.abs(q_near).reshape(q_near.shape[0], -1).max(axis=1).reshape(scale.shape) if scale.ndim
                 else np.abs(q_near).max())
        self.scale = torch.from_numpy(scale.astype(np.float32))
        self.floor = torch.from_numpy(np.floor(v))
        self.near = torch.from_numpy(q_near)
        # a channel's extreme elements stay put: the scale derived again from the weights is the same
        self.pinned = torch.from_numpy(np.abs(q_near) >= np.broadcast_to(limit, q_near.shape))
        self.lo, self.hi = torch.from_numpy(-np.broadcast_to(limit, q_near.shape).astype(np.float32)), \
            torch.from_numpy(np.broadcast_to(limit, q_near.shape).astype(np.float32))
        rest = np.clip(v - np.floor(v), 1e-4, 1 - 1e-4)
        p = (rest - GAMMA) / (ZETA - GAMMA)
        self.v = torch.nn.Parameter(torch.from_numpy(np.log(p / (1 - p)).astype(np.float32)))

    def to_device(self, device: torch.device) -> "Rounding":
        for k in ("scale", "floor", "near", "pinned", "lo", "hi"):
            setattr(self, k, getattr(self, k).to(device))
        self.v = torch.nn.Parameter(self.v.detach().to(device))
        return self

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0, 1)

    def integers(self, hard: bool) -> torch.Tensor:
        up = (self.v >= 0).float() if hard else self.h()
        q = torch.minimum(torch.maximum(self.floor + up, self.lo), self.hi)
        return torch.where(self.pinned, self.near, q)

    def weight(self, hard: bool = False) -> torch.Tensor:
        return self.integers(hard) * self.scale

    def regulariser(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()


def _channel(scale: np.ndarray, like: np.ndarray) -> np.ndarray:
    s = np.asarray(scale, dtype=np.float32)
    return s.reshape((-1,) + (1,) * (like.ndim - 1)) if s.size > 1 else s.reshape(())


class Stream:
    """One stream's live tensors over every sample (fp16 memory maps in `folder`)."""

    def __init__(self, folder: Path, name: str, count: int, device: torch.device) -> None:
        self.folder, self.name, self.count, self.device = folder, name, count, device
        self.maps: dict[str, np.ndarray] = {}

    def create(self, tensor: str, shape: Sequence[int]) -> np.ndarray:
        path = self.folder / f"{self.name}-{len(self.maps)}-{abs(hash(tensor)) % 10**8}.f16"
        self.maps[tensor] = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                                      shape=(self.count, *shape))
        return self.maps[tensor]

    def drop(self, keep: set[str]) -> None:
        for t in [t for t in self.maps if t not in keep]:
            m = self.maps.pop(t)
            path = Path(m.filename)
            del m
            path.unlink(missing_ok=True)


def _spatial(t: np.ndarray | torch.Tensor) -> bool:
    return len(t.shape) == 4


def _receptive_margin(blk: Block, strides: dict[str, float]) -> float:
    """How far (input pixels) a block's outputs see beyond their own position: the crop border
    whose outputs differ from the whole sample's, left out of the loss. Strides of the tensors inside
    the block follow from its inputs' (each Conv and MaxPool multiplies, a Resize divides)."""
    reach: dict[str, float] = {}
    stride = dict(strides)
    for kind, _fn, ins, outs, a in blk.runner.steps:  # type: ignore[union-attr]
        r = max([reach.get(i, 0.0) for i in ins if i] + [0.0])
        s_in = next((stride[i] for i in ins if i in stride), 1.0)
        s_out = s_in
        if kind in ("Conv", "MaxPool"):
            k = a.get("kernel_shape") or [3]
            r += (max(k) // 2) * max(a.get("dilations", [1])) * s_in
            s_out = s_in * max(a.get("strides", [1]))
        elif kind == "Resize" and "_factor" in a:
            s_out = s_in / max(a["_factor"])
        for o in outs:
            reach[o] = r
            stride.setdefault(o, s_out)
    return max([reach.get(o, 0.0) for o in blk.outputs] + [0.0])


def reconstruct(fp32: onnx.ModelProto, qmodel: onnx.ModelProto, samples: Any, settings: Settings, work: Path,
                layers: Sequence[str] | None = None, progress: Callable[[int, int], None] | None = None
                ) -> tuple[onnx.ModelProto, Record]:
    """The Q/DQ model `qmodel` with the integers of its convolutions' weights learned (`layers`: those
    to learn, default every conv stored as int8 behind a DequantizeLinear). `samples`: N x C x H x W
    FP32 inputs (sliceable); `work`: a folder for the streams' memory maps."""
    t0 = time.perf_counter()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    qw = quant_weights(qmodel, fp32)
    learn = {k: v for k, v in qw.items() if layers is None or k in layers}
    blocks = plan_blocks(qmodel, learn, settings.convs_per_block)
    n = min(settings.samples, len(samples))
    input_name = qmodel.graph.input[0].name
    image_hw = tuple(samples[0:1].shape[2:])
    device = torch.device(settings.device)
    fp, q = Stream(work, "fp", n, device), Stream(work, "q", n, device)
    for s in (fp, q):
        dst = s.create(input_name, samples[0:1].shape[1:])
        for i in range(n):
            dst[i] = np.asarray(samples[i:i + 1], dtype=np.float32)[0]
    rec = Record()
    roundings: dict[str, Rounding] = {}
    total_steps = len(blocks) * settings.iters
    for blk in blocks:
        blk.runner = GraphRunner(qmodel.graph, blk.nodes, blk.outputs,
                                 {learn[c].tensor: learn[c] for c in blk.convs}).to_device(device)
    for bi, blk in enumerate(blocks):
        assert blk.runner is not None
        missing = [t for t in blk.runner.inputs if t not in fp.maps]
        if missing:
            raise RuntimeError(f"block {bi} reads {missing}, which no earlier block produced")
        tb = time.perf_counter()
        _fill(blk, fp, "float", {})
        strides = {t: image_hw[0] / fp.maps[t].shape[2] for t in list(blk.runner.inputs) + blk.outputs
                   if _spatial(fp.maps[t])}
        rounds = {learn[c].tensor: Rounding(learn[c]).to_device(device) for c in blk.convs}
        before = _block_error(blk, fp, q, {}, nearest=True)
        losses = _learn(blk, fp, q, rounds, settings, gen, strides, image_hw,
                        (lambda k: progress(bi * settings.iters + k, total_steps)) if progress else None)
        hard = {t: r.weight(hard=True).detach() for t, r in rounds.items()}
        after = _block_error(blk, fp, q, hard, nearest=False)
        kept = after <= before
        if not kept:  # never worse than round-to-nearest on the samples it learned from
            hard, rounds = {}, {}
        _fill(blk, q, "quant", hard, src=q)
        keep = {t for b in blocks[bi + 1:] for t in b.runner.inputs}  # type: ignore[union-attr]
        fp.drop(keep)
        q.drop(keep)
        for c in blk.convs:
            if learn[c].tensor in rounds:
                roundings[c] = rounds[learn[c].tensor]
        rec.blocks.append({"block": bi, "convs": blk.convs, "outputs": len(blk.outputs), "crops": blk.local and settings.crop > 0,
                           "mse_nearest": before, "mse_learned": after, "kept": kept,
                           "mse_shipped": after if kept else before, "loss_first": losses[0], "loss_last": losses[-1],
                           "wall_s": round(time.perf_counter() - tb, 2)})
    fp.drop(set())
    q.drop(set())
    out = onnx.ModelProto()
    out.CopyFrom(qmodel)
    inits = {i.name: i for i in out.graph.initializer}
    rec.weights = int(sum(w.q.size for w in learn.values()))
    for c, r in roundings.items():
        w = learn[c]
        new = r.integers(hard=True).detach().cpu().numpy().astype(w.q.dtype)
        rec.changed += int((new != w.q).sum())
        # a float weight behind a Q/DQ pair (dq_only off) holds the value its QuantizeLinear rounds
        # back to exactly these integers
        value = ((new.astype(np.float32) - _channel(w.zero_point, w.q)) * _channel(w.scale, w.q)).astype(np.float32) \
            if w.stored_float else new
        inits[w.initializer].CopyFrom(numpy_helper.from_array(value, w.initializer))
    rec.wall_s = round(time.perf_counter() - t0, 2)
    return out, rec


def _feeds(stream: Stream, names: Sequence[str], idx: Sequence[int] | slice,
           device: torch.device | None = None) -> dict[str, torch.Tensor]:
    return {t: torch.from_numpy(np.asarray(stream.maps[t][idx], dtype=np.float32)).to(device or stream.device)
            for t in names}


def _fill(blk: Block, dst: Stream, mode: str, weights: dict[str, torch.Tensor], src: Stream | None = None) -> None:
    """Run the block over every sample on `src` (default `dst`), a few at a time, and store its
    outputs in `dst`."""
    src = src or dst
    runner = blk.runner
    assert runner is not None
    outs: dict[str, Any] = {}
    for i in range(0, dst.count, FILL_BATCH):
        j = min(i + FILL_BATCH, dst.count)
        with torch.no_grad():
            res = runner(_feeds(src, runner.inputs, slice(i, j)), mode=mode, weights=weights)
        for t, v in res.items():
            if t not in outs:
                outs[t] = dst.create(t, v.shape[1:])
            outs[t][i:j] = v.cpu().numpy().astype(np.float16)


def _crop_windows(image_hw: tuple[int, ...], crop: int, batch: int, gen: torch.Generator) -> list[tuple[int, int]]:
    """Top-left corners (input pixels, multiples of 32 so every stride cuts evenly)."""
    h, w = image_hw
    ys = max((h - crop) // 32, 0) + 1
    xs = max((w - crop) // 32, 0) + 1
    return [(int(torch.randint(ys, (1,), generator=gen)) * 32, int(torch.randint(xs, (1,), generator=gen)) * 32)
            for _ in range(batch)]


def _cut(x: np.ndarray, stride: float, y0: int, x0: int, crop: int) -> np.ndarray:
    s = stride
    return x[..., int(y0 / s):int((y0 + crop) / s), int(x0 / s):int((x0 + crop) / s)]


def _batch(blk: Block, fp: Stream, q: Stream, idx: list[int], settings: Settings, gen: torch.Generator,
           strides: dict[str, float], image_hw: tuple[int, ...], margin: float
           ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Inputs (quantized stream), targets (FP32 stream) and loss masks for one step."""
    runner = blk.runner
    assert runner is not None
    crop = settings.crop
    use_crop = blk.local and 0 < crop < min(image_hw) and crop - 2 * margin >= crop / 4
    if not use_crop:
        ins = _feeds(q, runner.inputs, idx)
        tgt = _feeds(fp, blk.outputs, idx)
        return ins, tgt, {}
    wins = _crop_windows(image_hw, crop, len(idx), gen)
    ins_l: dict[str, list[np.ndarray]] = {t: [] for t in runner.inputs}
    tgt_l: dict[str, list[np.ndarray]] = {t: [] for t in blk.outputs}
    masks: dict[str, list[np.ndarray]] = {t: [] for t in blk.outputs}
    for i, (y0, x0) in zip(idx, wins):
        for t in runner.inputs:
            ins_l[t].append(_cut(q.maps[t][i], strides[t], y0, x0, crop).astype(np.float32))
        for t in blk.outputs:
            tgt_l[t].append(_cut(fp.maps[t][i], strides[t], y0, x0, crop).astype(np.float32))
            s = strides[t]
            side = int(crop / s)
            m = np.zeros((side, side), np.float32)
            # the border whose receptive field leaves the crop is left out, unless it is the image's own
            top = 0 if y0 == 0 else math.ceil(margin / s)
            left = 0 if x0 == 0 else math.ceil(margin / s)
            bottom = 0 if y0 + crop >= image_hw[0] else math.ceil(margin / s)
            right = 0 if x0 + crop >= image_hw[1] else math.ceil(margin / s)
            m[top:side - bottom, left:side - right] = 1
            masks[t].append(m)
    dev = fp.device
    ins = {t: torch.from_numpy(np.stack(v)).to(dev) for t, v in ins_l.items()}
    tgt = {t: torch.from_numpy(np.stack(v)).to(dev) for t, v in tgt_l.items()}
    msk = {t: torch.from_numpy(np.stack(v))[:, None].to(dev) for t, v in masks.items()}
    return ins, tgt, msk


def _rec_loss(out: dict[str, torch.Tensor], tgt: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """BRECQ's reconstruction loss: squared error summed over channels, averaged over the rest."""
    total = torch.zeros((), device=next(iter(out.values())).device)
    for t, y in out.items():
        err = (y - tgt[t]).pow(2)
        if t in masks and err.dim() == 4:
            m = masks[t]
            total = total + (err.sum(1, keepdim=True) * m).sum() / m.sum().clamp(min=1) / 1.0
        else:
            total = total + (err.sum(1).mean() if err.dim() > 1 else err.mean())
    return total


def _learn(blk: Block, fp: Stream, q: Stream, rounds: dict[str, Rounding], settings: Settings, gen: torch.Generator, strides: dict[str, float], image_hw: tuple[int, ...],
           progress: Callable[[int], None] | None) -> list[float]:
    opt = torch.optim.Adam([r.v for r in rounds.values()], lr=settings.lr)
    margin = _receptive_margin(blk, strides)
    losses: list[float] = []
    runner = blk.runner
    assert runner is not None
    warm = int(settings.iters * WARMUP)
    for k in range(settings.iters):
        idx = torch.randint(fp.count, (settings.batch,), generator=gen).tolist()
        ins, tgt, masks = _batch(blk, fp, q, idx, settings, gen, strides, image_hw, margin)
        weights = {t: r.weight() for t, r in rounds.items()}
        out = runner(ins, mode="drop" if settings.drop > 0 else "quant", drop=settings.drop, weights=weights)
        rec = _rec_loss(out, tgt, masks)
        if k < warm:
            reg = torch.zeros((), device=rec.device)
        else:
            frac = (k - warm) / max(settings.iters - warm, 1)
            beta = BETA_END + 0.5 * (BETA_START - BETA_END) * (1 + math.cos(math.pi * frac))
            reg = ROUND_WEIGHT * sum(r.regulariser(beta) for r in rounds.values())
        loss = rec + reg
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k == 0 or k == settings.iters - 1:
            losses.append(round(float(rec.detach()), 6))
        if progress:
            progress(k + 1)
    return losses


def _block_error(blk: Block, fp: Stream, q: Stream, weights: dict[str, torch.Tensor], nearest: bool) -> float:
    """The block's mean squared output error on the first CHECK_SAMPLES samples (quantized stream in,
    FP32 stream as the target), with round-to-nearest weights or the learned ones: what decides
    whether the learned rounding is kept."""
    runner = blk.runner
    assert runner is not None
    n = min(fp.count, CHECK_SAMPLES)
    total = 0.0
    for i in range(0, n, FILL_BATCH):
        j = min(i + FILL_BATCH, n)
        with torch.no_grad():
            out = runner(_feeds(q, runner.inputs, slice(i, j)), mode="quant", weights=None if nearest else weights)
            total += float(_rec_loss(out, _feeds(fp, blk.outputs, slice(i, j)), {})) * (j - i)
    return total / max(n, 1)


def adapted_fp32(fp32: onnx.ModelProto, qmodel: onnx.ModelProto) -> onnx.ModelProto:
    """The FP32 model with each convolution's weight replaced by the values `qmodel`
    computes with: integers times scale. A target's quantizer run on it derives the same per-channel
    scales and the same integers (the extremes were kept), so the adapted weights carry over to a
    quantizer that starts from an FP32 model (ModelOpt, ORT, NNCF)."""
    out = onnx.ModelProto()
    out.CopyFrom(fp32)
    inits = {i.name: i for i in out.graph.initializer}
    for w in quant_weights(qmodel, fp32).values():
        fw = next(n for n in out.graph.node if n.name == w.conv).input[1]
        values = (w.q.astype(np.float32) - _channel(w.zero_point, w.q)) * _channel(w.scale, w.q)
        inits[fw].CopyFrom(numpy_helper.from_array(values.astype(np.float32), fw))
    return out
