"""Entropy (KL-divergence) calibration with bounded histograms, handed to ModelOpt as a calibration cache.

Why not ModelOpt's own entropy path: it runs ONNX Runtime's histogram collector, which keeps the
bin *width* of the first sample and appends bins whenever a later sample has a larger magnitude.
A tensor whose first sample is small grows past 100,000 bins, and the threshold search is
quadratic in the bin count: 385 s against 4 s for max on 64 images (issue #7).

Here, as TensorRT does: max calibration first (ModelOpt, unchanged), whose scales give each
tensor's range [0, amax]; one more pass histograms |x| into a fixed 2048 bins over that range;
the KL search picks each threshold. The scales are written as a TensorRT calibration cache
(ModelOpt's `calibration_cache_path` format) and applied with ModelOpt's own cache reader.
"""

from __future__ import annotations

import struct
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

NUM_BINS = 2048
QUANT_BINS = 128  # int8: 2^(8-1) levels on each side of zero
CACHE_HEADER = "TRT-8600-EntropyCalibration2"


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """{tensor: scale} for every QuantizeLinear of an activation (weights are initializers)."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits and n.input[1] in inits:
            scale = numpy_helper.to_array(inits[n.input[1]])
            if scale.size == 1:
                out[n.input[0]] = float(scale.reshape(-1)[0])
    return out


def scale_groups(scales: dict[str, float]) -> list[list[str]]:
    """Tensors sharing a bit-identical max scale: ModelOpt gives the inputs of a Concat it removes
    Q/DQ around one scale (its concat elimination); they must keep one scale after entropy too."""
    by: dict[int, list[str]] = {}
    for t, s in scales.items():
        by.setdefault(struct.unpack("!I", struct.pack("!f", s))[0], []).append(t)
    return list(by.values())


def collect_histograms(model_path: Path, amax: dict[str, float], reader: Any, bins: int = NUM_BINS,
                       threads: int | None = None) -> tuple[dict[str, np.ndarray], int]:
    """Histogram of |x| over [0, amax] for each tensor, over every sample the reader gives."""
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    have = {o.name for o in model.graph.output}
    for t in amax:
        if t not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=t))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as td:  # the extended graph, written so big models load too
        path = Path(td) / "extended.onnx"
        onnx.save(model, str(path))
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = list(amax)
    hists = {t: np.zeros(bins, np.int64) for t in names}
    reader.rewind()
    n = 0
    while (feed := reader.get_next()) is not None:
        for t, x in zip(names, sess.run(names, feed)):
            a = amax[t]
            if a > 0:
                # values past amax (none for max-calibrated ranges) land in the last bin
                idx = np.minimum((np.abs(x, dtype=np.float32).reshape(-1) * (bins / a)).astype(np.int64), bins - 1)
                hists[t] += np.bincount(idx, minlength=bins)
        n += 1
    return hists, n


def entropy_amax(hist: np.ndarray, amax: float, start_bin: int = QUANT_BINS, stride: int = 1) -> float:
    """The clipping threshold that minimises KL(P || Q), P the clipped reference distribution and
    Q its 128-level quantization (TensorRT's entropy calibration, after pytorch-quantization)."""
    bins = hist.astype(np.float64).copy()
    n = len(bins)
    if bins.sum() == 0 or amax <= 0:
        return amax
    bins[0] = bins[1]  # zeros (post-ReLU/SiLU) would dominate the distribution otherwise
    tail = np.concatenate([np.cumsum(bins[::-1])[::-1], [0.0]])  # tail[i] = sum(bins[i:])
    best, best_i = np.inf, n
    for i in range(start_bin, n + 1, stride):
        p = bins[:i]
        nz = p > 0
        d = (np.arange(i) * QUANT_BINS) // i
        sums = np.bincount(d[nz], weights=p[nz], minlength=QUANT_BINS)
        cnt = np.bincount(d[nz], minlength=QUANT_BINS)
        q = np.where(nz, (sums / np.maximum(cnt, 1))[d], 0.0)
        ref = p.copy()
        ref[-1] += tail[i]
        ref_sum, q_sum = ref.sum(), q.sum()
        if q_sum == 0:
            continue
        ref, q = ref / ref_sum, q / q_sum
        m = ref > 0
        if np.any(q[m] == 0):
            kl = np.inf
        else:
            kl = float(np.sum(ref[m] * np.log(ref[m] / q[m])))
        if kl <= best:  # ties go to the larger threshold, as in pytorch-quantization
            best, best_i = kl, i
    return float(amax * best_i / n)


def entropy_amax_fast(hist: np.ndarray, amax: float, start_bin: int = QUANT_BINS) -> float:
    """`entropy_amax` for every candidate threshold at once, from prefix sums: the KL sum splits
    into per-group terms (each group's Q is flat), so a threshold costs O(128), not O(bins).
    Same thresholds as the loop (a test holds them equal); ~100x faster."""
    bins = hist.astype(np.float64).copy()
    n = len(bins)
    total = bins.sum()
    if total == 0 or amax <= 0:
        return amax
    bins[0] = bins[1]
    total = bins.sum()
    plogp = np.where(bins > 0, bins * np.log(np.where(bins > 0, bins, 1.0)), 0.0)
    cp = np.concatenate([[0.0], np.cumsum(bins)])           # sum of p over [0, j)
    cpl = np.concatenate([[0.0], np.cumsum(plogp)])         # sum of p log p over [0, j)
    cn = np.concatenate([[0], np.cumsum(bins > 0)])         # nonzero bins over [0, j)
    i = np.arange(start_bin, n + 1)[:, None]                # candidate thresholds (bins kept)
    k = np.arange(QUANT_BINS + 1)[None, :]
    edges = -((-k * i) // QUANT_BINS)                       # ceil(k * i / 128): group k = [edges_k, edges_k+1)
    lo, hi = edges[:, :-1], edges[:, 1:]
    s_k, c_k = cp[hi] - cp[lo], cn[hi] - cn[lo]
    i1 = i[:, 0]
    s_i = cp[i1]                                            # clipped mass without the tail
    tail = total - s_i
    with np.errstate(divide="ignore", invalid="ignore"):
        logq = np.log(s_k / (c_k * s_i[:, None]))           # log of normalised Q on each group's nonzero bins
        # all bins but the last one kept: their P is p / total
        last = i1 - 1
        a_k = cpl[hi] - cpl[lo]
        s_adj = s_k.copy()
        a_adj = a_k.copy()
        s_adj[:, -1] -= bins[last]
        a_adj[:, -1] -= plogp[last]
        body = np.where(c_k > 0, (a_adj - s_adj * (np.log(total) + logq)) / total, 0.0).sum(1)
        ref_last = bins[last] + tail
        q_last = np.where(bins[last] > 0, logq[:, -1], -np.inf)
        last_term = np.where(ref_last > 0, ref_last / total * (np.log(ref_last / total) - q_last), 0.0)
    kl = body + last_term
    kl = np.where(np.isnan(kl) | (s_i == 0), np.inf, kl)
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))           # ties go to the larger threshold
    return float(amax * int(i1[best]) / n)


def write_calibration_cache(path: Path, scales: dict[str, float]) -> None:
    """TensorRT calibration cache: a header line, then `tensor: <big-endian float32 hex>` per tensor."""
    lines = [CACHE_HEADER] + [f"{t}: {struct.pack('!f', s).hex()}" for t, s in sorted(scales.items())]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def apply_calibration_cache(model_path: Path, cache_path: Path) -> int:
    """Replace activation scales in a ModelOpt Q/DQ model with a cache's, with ModelOpt's own reader
    and writer (what `quantize(calibration_cache_path=...)` does after its calibration)."""
    from modelopt.onnx.quantization.calib_utils import import_scales_from_calib_cache
    from modelopt.onnx.quantization.qdq_utils import replace_scale_values

    scales = import_scales_from_calib_cache(str(cache_path))
    model = onnx.load(str(model_path))
    present = {i.name for i in model.graph.initializer}
    replace_scale_values(model.graph, scales)
    tmp = Path(str(model_path) + ".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(model_path)
    return sum(1 for k in scales if k in present)


def entropy_scales(fp32_path: Path, max_model: onnx.ModelProto, reader: Any,
                   threads: int | None = None) -> dict[str, Any]:
    """Entropy scales for the activations ModelOpt's max run quantized; grouped tensors share one."""
    t0 = time.perf_counter()
    max_scales = activation_scales(max_model)
    amax = {t: s * 127.0 for t, s in max_scales.items()}
    hists, samples = collect_histograms(fp32_path, amax, reader, threads=threads)
    t1 = time.perf_counter()
    scales: dict[str, float] = {}
    for group in scale_groups(max_scales):
        h = np.sum([hists[t] for t in group], axis=0)  # same range (same amax): bins line up
        a = entropy_amax_fast(h, amax[group[0]])
        for t in group:
            scales[t] = a / 127.0
    return {"scales": scales, "max_scales": max_scales, "samples": samples, "bins": NUM_BINS,
            "groups": [g for g in scale_groups(max_scales) if len(g) > 1],
            "histogram_s": round(t1 - t0, 3), "search_s": round(time.perf_counter() - t1, 3)}


def clipped_share(scales: dict[str, float], max_scales: dict[str, float]) -> Iterable[float]:
    return [scales[t] / max_scales[t] for t in scales if max_scales.get(t)]
