"""Activation-range estimators for symmetric int8, from one streamed pass over the calibration samples.

ModelOpt's `max` takes the largest magnitude over all samples, so every added sample can only widen
a range and coarsen its scale: more calibration data gives a worse model (YOLOv5n on 79 images:
-0.55 pt at 32 samples, -1.65 at 80). The estimators here read what `entropy.collect_histograms`
gathers in one pass, memory flat in the sample count (a fixed histogram per tensor and a running
sum of per-sample maxima), and return a clip `amax` per tensor (scale = amax / 127):

- `mean-max`: the mean over samples of each sample's largest magnitude (NNCF's default statistic,
  averaged per-sample min/max, taken symmetric): it converges as samples are added;
- `percentile`: the magnitude below which `percentile`% of all values fall;
- `mse`: the clip that minimises the mean squared quantisation error over the histogram, tried at
  every bin edge (NVIDIA's YOLO PTQ recipe, pytorch-quantization's HistogramCalibrator "mse": bin
  centres fake-quantised, squared error weighted by the counts);
- `entropy`: ONNX Runtime's KL search (tasks/quantization/entropy.py);
- `max`: the histogram's own range (ModelOpt's max scales, unchanged).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from tasks.quantization.entropy import (NUM_BINS, activation_scales, collect_histograms, ort_entropy_threshold,
                                        scale_groups)

QMAX = 127  # symmetric int8 activations, as ModelOpt places them for TensorRT


def folded(hist: np.ndarray) -> np.ndarray:
    """A signed histogram over [-amax, amax] (even bin count, zero at its centre) as a histogram of
    |x| over [0, amax]: bin k of the result holds both bins at distance k from zero."""
    n = len(hist)
    if n % 2:
        raise ValueError(f"a signed histogram needs an even bin count, got {n}")
    half = n // 2
    return hist[half:].astype(np.float64) + hist[:half][::-1].astype(np.float64)


def mean_max(absmax_sum: float, samples: int) -> float:
    """Mean over samples of each sample's largest magnitude."""
    return float(absmax_sum) / samples if samples else 0.0


def percentile_amax(hist: np.ndarray, amax: float, percentile: float = 99.99) -> float:
    """The upper edge of the |x| bin at which the cumulative share reaches `percentile`%."""
    h = folded(hist)
    total = h.sum()
    if total == 0 or amax <= 0:
        return amax
    k = int(np.searchsorted(np.cumsum(h), total * percentile / 100.0, side="left"))
    return float(amax * min(k + 1, len(h)) / len(h))


def mse_amax(hist: np.ndarray, amax: float, start_frac: float = 0.1) -> float:
    """The clip (a bin's upper edge, from `start_frac` of the range up) whose fake quantisation of
    the bin centres has the smallest count-weighted squared error."""
    h = folded(hist)
    n = len(h)
    if h.sum() == 0 or amax <= 0:
        return amax
    width = amax / n
    centres = (np.arange(n) + 0.5) * width
    best, best_c = np.inf, amax
    for k in range(max(1, int(n * start_frac)) - 1, n):
        c = (k + 1) * width
        s = c / QMAX
        q = np.clip(np.round(centres / s), 0, QMAX) * s
        err = float(((centres - q) ** 2 * h).sum())
        if err < best:
            best, best_c = err, c
    return float(best_c)


def estimate(method: str, st: dict[str, Any], amax: float, settings: Any = None) -> float:
    """The clip of one tensor from its collected statistics (`entropy.collect_histograms`)."""
    fn = ESTIMATORS.get(method)
    if fn is None:
        raise ValueError(f"unknown range estimator {method!r}; use one of {', '.join(ESTIMATORS)}")
    return float(min(fn(st, amax, settings), amax))


def _max(st: dict[str, Any], amax: float, settings: Any) -> float:
    return amax


def _mean_max(st: dict[str, Any], amax: float, settings: Any) -> float:
    return mean_max(st["absmax_sum"], st["samples"]) or amax


def _percentile(st: dict[str, Any], amax: float, settings: Any) -> float:
    return percentile_amax(st["hist"], amax, getattr(settings, "percentile", 99.99))


def _mse(st: dict[str, Any], amax: float, settings: Any) -> float:
    return mse_amax(st["hist"], amax)


def _entropy(st: dict[str, Any], amax: float, settings: Any) -> float:
    return ort_entropy_threshold(st["hist"], amax, st["first"] or 0.0, st["min"], st["max"])


ESTIMATORS: dict[str, Callable[[dict[str, Any], float, Any], float]] = {
    "max": _max, "entropy": _entropy, "mean-max": _mean_max, "percentile": _percentile, "mse": _mse,
}

HISTOGRAM_METHODS = tuple(m for m in ESTIMATORS if m != "max")


def merged(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """One group's statistics (tensors that must share a scale, over the same amax): histograms
    summed, extremes and per-sample maxima combined, as ORT merges a group's data."""
    return {"hist": np.sum([x["hist"] for x in stats], axis=0), "first": max(x["first"] or 0.0 for x in stats),
            "min": min(x["min"] for x in stats), "max": max(x["max"] for x in stats),
            # per sample, the group's largest magnitude is at least each member's: the mean of the
            # members' largest is the closest bound a running sum allows
            "absmax_sum": max(x["absmax_sum"] for x in stats), "samples": max(x["samples"] for x in stats)}


def max_amax(max_model: onnx.ModelProto) -> dict[str, float]:
    """The clip of every activation ModelOpt's max run quantized (the histograms' ranges)."""
    return {t: s * QMAX for t, s in activation_scales(max_model).items()}


def save_stats(path: Path, stats: dict[str, dict[str, Any]], samples: int) -> None:
    """The streamed pass's statistics as one .npz (a few MB: fixed-size histograms), so every
    estimator of one calibration set reads the same pass (a method sweep pays for it once)."""
    names = list(stats)
    arrays: dict[str, Any] = {"names": np.array(names), "samples": np.array(samples),
                              "hist": np.stack([stats[t]["hist"] for t in names]) if names else np.zeros((0, NUM_BINS))}
    for k in ("first", "min", "max", "absmax_sum", "samples_per"):
        src = "samples" if k == "samples_per" else k
        arrays[k] = np.array([float(stats[t][src] or 0.0) for t in names], dtype=np.float64)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_stats(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    with np.load(path) as z:
        stats = {str(t): {"hist": z["hist"][i], "first": float(z["first"][i]), "min": float(z["min"][i]),
                          "max": float(z["max"][i]), "absmax_sum": float(z["absmax_sum"][i]),
                          "samples": int(z["samples_per"][i])} for i, t in enumerate(z["names"])}
        return stats, int(z["samples"])


def histogram_scales(fp32_path: Path, max_model: onnx.ModelProto, reader: Any, method: str, settings: Any = None,
                     threads: int | None = None,
                     stats: tuple[dict[str, dict[str, Any]], int] | None = None) -> dict[str, Any]:
    """Scales by `method` for the activations ModelOpt's max run quantized, from one streamed pass
    (or `stats`, that pass already made over the same samples and ranges); tensors ModelOpt gave one
    scale keep one (computed from their merged statistics)."""
    t0 = time.perf_counter()
    max_scales = activation_scales(max_model)
    amax = {t: s * QMAX for t, s in max_scales.items()}
    if stats is not None and set(stats[0]) != set(amax):
        raise ValueError("the histogram statistics given were not collected for this model's quantized tensors")
    stats_d, samples = stats if stats is not None else collect_histograms(fp32_path, amax, reader, threads=threads)
    t1 = time.perf_counter()
    scales: dict[str, float] = {}
    groups = scale_groups(max_scales)
    for group in groups:
        a = estimate(method, merged([stats_d[t] for t in group]), amax[group[0]], settings)
        for t in group:
            scales[t] = a / QMAX
    return {"method": method, "scales": scales, "max_scales": max_scales, "samples": samples, "bins": NUM_BINS,
            "groups": [g for g in groups if len(g) > 1],
            "histogram_s": round(t1 - t0, 3), "reused_stats": stats is not None, "search_s": round(time.perf_counter() - t1, 3)}
