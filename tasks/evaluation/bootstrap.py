"""Paired bootstrap intervals for COCO mAP, from pycocotools' own per-image matching.

A delta of INT8 against FP32 on a few hundred images moves by tenths of a point with the images drawn,
so every delta gets a 95% interval: resample the evaluated images with replacement, score both models
on the same resample, take percentiles of the differences. Re-running COCOeval per resample would cost
a whole evaluation each time; but which detection matches which ground truth (`evaluateImg`) is a
property of one image and does not change when images are resampled: only the accumulation over
images does. So the matching is read once from COCOeval and the accumulation is redone here, for many
resamples at once, with each image's multiplicity as a weight (exactly what pycocotools computes on a
data set in which each image appears that many times: tested against it).

Each model's replicates are a function of (seed, resamples, image list) only, so two evaluations made
apart (cached, on other machines, in shards) pair up resample by resample.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

# Elements of one (resamples x detections) block: bounds the memory of a category's accumulation
# (float64, a few arrays alive at once) to a few tens of MB, whatever the class.
_BLOCK = 2_000_000


@dataclass
class CategoryMatches:
    """One category's detections over all evaluated images (area 'all', the last maxDets), sorted by
    score as COCOeval.accumulate sorts them."""

    image_index: np.ndarray  # (D,) position of each detection's image in the evaluated image list
    tps: np.ndarray  # (T, D) matched and not ignored
    fps: np.ndarray  # (T, D) unmatched and not ignored
    npig: np.ndarray  # (I,) each image's ground truths that count (not ignored)


def match_tables(ev: Any) -> tuple[list[CategoryMatches], np.ndarray, list[int]]:
    """Per-category match tables from a COCOeval after `evaluate()`, the recall thresholds, and the
    image ids in the order the tables index them (COCOeval's sorted unique ids)."""
    p = ev.params
    img_ids = list(p.imgIds)
    n_img, n_area = len(img_ids), len(p.areaRng)
    max_det = p.maxDets[-1]
    n_thr = len(p.iouThrs)
    tables = []
    for k in range(len(p.catIds)):
        base = k * n_area * n_img  # area index 0 ('all')
        scores, img_idx, dtm, dtig = [], [], [], []
        npig = np.zeros(n_img, dtype=np.float64)
        for i in range(n_img):
            e = ev.evalImgs[base + i]
            if e is None:
                continue
            s = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
            scores.append(s)
            img_idx.append(np.full(len(s), i, dtype=np.int64))
            dtm.append(np.asarray(e["dtMatches"])[:, :max_det])
            dtig.append(np.asarray(e["dtIgnore"])[:, :max_det])
            npig[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
        if not scores:
            continue  # no image has this category at all: COCOeval leaves it out (-1)
        s = np.concatenate(scores)
        order = np.argsort(-s, kind="mergesort")  # COCOeval's order, ties included
        m = np.concatenate(dtm, axis=1)[:, order] if len(s) else np.zeros((n_thr, 0))
        ig = np.concatenate(dtig, axis=1)[:, order].astype(bool) if len(s) else np.zeros((n_thr, 0), bool)
        tps = np.logical_and(m, ~ig)
        fps = np.logical_and(np.logical_not(m), ~ig)
        # Detections after the last true positive (at any IoU threshold) only lower precision at a
        # recall already reached: they can change no interpolated precision, so they are dropped.
        hit = np.flatnonzero(tps.any(axis=0))
        keep = np.zeros(len(s), dtype=bool)
        if hit.size:
            keep[: hit[-1] + 1] = True
        keep &= ~ig.all(axis=0)  # ignored everywhere: adds nothing to either sum
        tables.append(CategoryMatches(np.concatenate(img_idx)[order][keep], tps[:, keep], fps[:, keep], npig))
    return tables, np.asarray(p.recThrs, dtype=np.float64), img_ids


def resample_weights(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_images) multiplicities of each image in each resample; a function of its
    arguments only, so every model evaluated on the same images gets the same resamples."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_images, size=(resamples, n_images))
    w = np.zeros((resamples, n_images), dtype=np.float64)
    np.add.at(w, (np.repeat(np.arange(resamples), n_images), draws.ravel()), 1.0)
    return w


def _min_tp(thr: np.ndarray, npig: np.ndarray) -> np.ndarray:
    """(B, R): the least true-positive count c with c / npig >= thr in floating point, the comparison
    COCOeval's searchsorted makes on recall. Counts are integers, so searching them is exact."""
    n = npig[:, None]
    c = np.ceil(thr[None, :] * n)
    c = np.where((c - 1) / n >= thr[None, :], c - 1, c)
    return np.where(c / n < thr[None, :], c + 1, c)


def _interpolated(tp: np.ndarray, env: np.ndarray, need: np.ndarray, n: np.ndarray) -> np.ndarray:
    """(b,) mean over the recall thresholds of the envelope at the first point whose true-positive
    count reaches `need` (0 past the last point): COCOeval's searchsorted on recall. The counts are
    small integers (at most the ground truths), so the first index reaching c is the number of points
    below c, read from a per-row histogram of counts: linear, where a binary search per threshold
    and row cost four times the whole accumulation."""
    b, p = tp.shape
    big = int(n.max()) + 2
    rows = np.arange(b)[:, None]
    hist = np.bincount((tp.astype(np.int64) + rows * big).ravel(), minlength=b * big).reshape(b, big)
    # below[r, v + 1]: points of row r with a count <= v; below[r, 0] = 0 serves c = 0
    below = np.zeros((b, big + 1), dtype=np.int64)
    np.cumsum(hist, axis=1, out=below[:, 1:])
    at = np.take(below, need.astype(np.int64) + rows * (big + 1))  # the first point reaching c
    vals = np.take(env, np.minimum(at, p - 1) + rows * p)
    vals[at >= p] = 0.0
    return vals.mean(axis=1)


def _category_precision(t: CategoryMatches, weights: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """(B, T) mean interpolated precision of one category under each resample's weights; NaN where the
    resample holds none of its ground truths (COCOeval's -1).

    Only the true positives' points are computed: interpolated precision is read at the first point
    reaching each recall threshold, which is a true positive, and the envelope there is the highest
    precision at or after it, which a false positive never holds (it follows a point of the same
    recall and higher precision). A false positive still counts, in the denominators after it."""
    n_b = weights.shape[0]
    n_t, n_d = t.tps.shape
    npig = weights @ t.npig
    out = np.full((n_b, n_t), np.nan)
    if n_d == 0:
        out[npig > 0] = 0.0
        return out
    ignored = ~(t.tps | t.fps)
    step = max(1, _BLOCK // n_d)
    for b0 in range(0, n_b, step):
        w = weights[b0:b0 + step][:, t.image_index]  # (b, D) each detection's multiplicity
        n = npig[b0:b0 + step]
        b = len(w)
        seen = np.cumsum(w, axis=1)  # detections so far, ignored ones included
        safe_n = np.where(n > 0, n, 1.0)
        need = _min_tp(rec_thrs, safe_n)  # (b, R)
        for k in range(n_t):
            pos = np.flatnonzero(t.tps[k])
            if pos.size == 0:
                out[b0:b0 + step, k] = 0.0
                continue
            tp = np.cumsum(w[:, pos], axis=1)  # (b, P) integer-valued
            counted = seen[:, pos]
            ig_pos = np.flatnonzero(ignored[k])
            if ig_pos.size:
                ig = np.cumsum(w[:, ig_pos], axis=1)
                before = np.searchsorted(ig_pos, pos, side="right")
                counted = counted - np.where(before > 0, ig[:, np.maximum(before - 1, 0)], 0.0)
            pr = tp / (counted + np.spacing(1))
            env = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
            out[b0:b0 + step, k] = _interpolated(tp, env, need, safe_n)
        out[b0:b0 + step][n <= 0] = np.nan
    return out


def replicate_maps(tables: Sequence[CategoryMatches], rec_thrs: np.ndarray,
                   weights: np.ndarray) -> dict[str, np.ndarray]:
    """mAP50-95 and mAP50 under each row of `weights` (B, I)."""
    n_b = weights.shape[0]
    if not tables:
        return {"map50_95": np.zeros(n_b), "map50": np.zeros(n_b)}
    per = np.stack([_category_precision(t, weights, rec_thrs) for t in tables], axis=1)  # (B, K, T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without any ground truth: NaN, then 0
        m5095 = np.nanmean(per.reshape(n_b, -1), axis=1)
        m50 = np.nanmean(per[:, :, 0], axis=1)
    return {"map50_95": np.nan_to_num(m5095), "map50": np.nan_to_num(m50)}


def bootstrap_record(ev: Any, resamples: int, seed: int) -> dict[str, Any]:
    """The replicates an evaluation keeps so that any two evaluations of the same images pair up:
    each resample's mAP50-95 and mAP50, with the seed, the count and the wall time spent."""
    t0 = time.perf_counter()
    tables, rec_thrs, img_ids = match_tables(ev)
    reps = replicate_maps(tables, rec_thrs, resample_weights(len(img_ids), resamples, seed))
    return {"resamples": resamples, "seed": seed, "image_ids": [int(i) for i in img_ids],
            "map50_95": np.round(reps["map50_95"], 6).tolist(), "map50": np.round(reps["map50"], 6).tolist(),
            "wall_s": round(time.perf_counter() - t0, 3)}


def empty_record(n_images: int, resamples: int, seed: int, image_ids: Sequence[int]) -> dict[str, Any]:
    """A model with no detection scores 0 under every resample."""
    return {"resamples": resamples, "seed": seed, "image_ids": sorted(int(i) for i in image_ids),
            "map50_95": [0.0] * resamples, "map50": [0.0] * resamples, "wall_s": 0.0}


def paired_interval(base: dict[str, Any] | None, other: dict[str, Any] | None, stat: str,
                    level: float = 0.95) -> list[float] | None:
    """Percentile interval of (other - base) for `stat` over the shared resamples; None when the two
    were not resampled alike (other images, seed or count), so no interval is ever mis-paired."""
    if not base or not other:
        return None
    if (base.get("seed"), base.get("resamples"), base.get("image_ids")) != \
            (other.get("seed"), other.get("resamples"), other.get("image_ids")):
        return None
    d = np.asarray(other[stat], dtype=np.float64) - np.asarray(base[stat], dtype=np.float64)
    if d.size == 0:
        return None
    a = (1 - level) / 2
    lo, hi = np.quantile(d, [a, 1 - a])
    return [round(float(lo), 6), round(float(hi), 6)]


def budget_reading(delta: float, ci: list[float] | None, budget_points: float | None,
                   n_images: int) -> dict[str, Any] | None:
    """What the interval says about a drop budget: the data show the INT8 model within the budget
    (the whole interval above -budget), over it (the whole interval below), or cannot tell (it
    straddles -budget); then roughly how many images would tell, from the interval's width shrinking
    as 1/sqrt(images) around the same point estimate. All in mAP points."""
    if ci is None or budget_points is None:
        return None
    lo, hi = ci[0] * 100, ci[1] * 100
    line = -float(budget_points)
    if lo > line:
        return {"reading": "within", "images_needed": None}
    if hi < line:
        return {"reading": "over", "images_needed": None}
    half = (hi - lo) / 2
    gap = abs(delta * 100 - line)
    needed = None if gap < 1e-9 else int(np.ceil(round(n_images * (half / gap) ** 2, 6)))
    return {"reading": "cannot tell", "images_needed": needed}
