"""COCO mAP and latency of a YOLO model on ONNX Runtime or OpenVINO: preprocessing -> inference -> decoding ->
pycocotools, with each phase timed apart."""

from __future__ import annotations

import ast
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from pydantic import BaseModel, Field, field_validator

from tasks import __version__
from tasks.evaluation.classes import ClassMatch, match_classes
from tasks.evaluation.coco_eval import AnnotationError, evaluate_detections, select_subset
from tasks.evaluation.decode import DecodeError, decode, detect_format, refuse_other_tasks
from tasks.evaluation.sources.base import DataSpec, EvalData
from tasks.evaluation.sources.table import read_data
from tasks.run.progress import ProgressFn
from tasks.evaluation.sessions import open_session
from tasks.evaluation.shapes import dynamic_record, pin
from tasks.evaluation.preprocess import ImageError, PreprocessSpec, load_rgb, letterbox, to_original
from tasks.run.rundir import sha256_file
from tasks.evaluation.runtime import (
    DEFAULT_PROVIDERS, check_model_file, latency_stats, model_io, model_metadata,
)

log = logging.getLogger(__name__)


class EvalSettings(BaseModel):
    """Everything that changes an evaluation's figures, besides the files themselves."""

    output_format: Literal["auto", "yolov10", "yolov8", "yolov5"] = Field(
        "auto", description="output layout; auto reads the export's metadata and output shape")
    conf_thres: float = Field(0.001, ge=0, lt=1, description="confidence threshold for mAP (low on purpose)")
    iou_thres: float = Field(0.65, gt=0, le=1, description="NMS IoU threshold (yolov8/yolov5 outputs)")
    max_det: int = Field(300, gt=0, description="detections kept per image")
    class_map: list[int] | None = Field(None, description="category id per class index; default: file's ids in order")
    preprocess: PreprocessSpec = Field(default_factory=PreprocessSpec)
    runtime: Literal["onnxruntime", "openvino"] = Field(
        "onnxruntime", description="what runs the model: onnxruntime (with `providers`) or openvino (its CPU "
                                   "plugin, f32 precision for float layers)")
    providers: list[str] = Field(default_factory=lambda: list(DEFAULT_PROVIDERS),
                                 description="evaluation execution providers in priority order")
    strict_providers: bool = Field(False, description="fail instead of falling back to the CPU EP")
    threads: int | None = Field(None, ge=1, description="ORT intra-op threads (default: all cores)")
    warmup: int = Field(10, ge=0, description="untimed runs before latency is measured")
    deployed_runs: int = Field(20, ge=0, le=1000, description="then one image run this many times back to back "
                                                             "on a deployed-style session (ORT's worker threads "
                                                             "spinning, its default): the latency a service "
                                                             "sees, up to 1.5x below the evaluator's; 0: skip")
    bootstrap_resamples: int = Field(1000, ge=0, le=10000, description=(
        "image resamples of the paired bootstrap that puts a 95% interval on every mAP delta (the same "
        "resamples for every model on the same images); 0: no intervals"))
    bootstrap_seed: int = Field(0, description="seed of the bootstrap's resamples")
    imgsz: list[int] | None = Field(None, min_length=1, max_length=2, description=(
        "height and width (one number: both) to run a dynamic-shape export at; default: the export's "
        "imgsz metadata. A static export runs at its own size"))

    @field_validator("imgsz")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and min(v) <= 0:
            raise ValueError(f"imgsz {v}: sizes must be positive (e.g. --imgsz 640)")
        return v


def _metadata_names(meta: dict[str, str]) -> dict[int, str] | None:
    raw = meta.get("names")
    if not raw:
        return None
    try:
        names = ast.literal_eval(raw)  # Ultralytics stores a Python dict repr
        return {int(k): str(v) for k, v in names.items()} if isinstance(names, dict) else None
    except (ValueError, SyntaxError):
        return None


def resolve_format(model, settings: EvalSettings) -> tuple[str, int | None, dict[str, Any]]:
    """(format, class count or None, description) from the settings, metadata and output shape. A
    segment, pose, OBB or classify export is refused here, naming its task (this tool scores boxes)."""
    _, _, outs = model_io(model)
    meta = model_metadata(model)
    names = _metadata_names(meta)
    end2end = {"True": True, "False": False}.get(meta.get("end2end", ""), None)
    refuse_other_tasks(meta.get("task"), [shape for _, shape in outs], end2end, "kpt_shape" in meta)
    if settings.output_format == "auto":
        fmt, nc = detect_format(outs[0][1], end2end=end2end)
    else:
        fmt = settings.output_format
        # The decoders read a (1 x) rows x columns table, whatever the layout. No dims at all may be a
        # shape the export did not record, which an explicit format is the way around: not refused.
        if len(outs[0][1]) == 1 or len(outs[0][1]) > 3:
            raise DecodeError(f"output shape {list(outs[0][1])} is not a YOLO detection output (a 1xRxC table); "
                              f"--output-format {fmt} cannot decode it; pass a YOLO detection export")
        try:
            _, nc = detect_format(outs[0][1], end2end=(fmt == "yolov10"))
        except DecodeError:
            nc = None
    if names is not None:
        if nc is not None and nc != len(names):
            log.warning("metadata lists %d class names but the output has %d classes", len(names), nc)
        nc = nc if nc is not None else len(names)
    return fmt, nc, {"output": outs[0][0], "output_shape": list(outs[0][1]), "chosen": settings.output_format == "auto",
                     **({"names": names} if names is not None else {})}


def _check_image_files(data: EvalData, image_ids: Sequence[int]) -> list[tuple[int, Path]]:
    """(id, path) of every evaluated image; all of them must exist (the error counts the missing)."""
    items = [(iid, data.paths[iid]) for iid in image_ids]
    missing = [(iid, p) for iid, p in items if not p.is_file()]
    if missing:
        iid, p = missing[0]
        raise FileNotFoundError(f"image {p} (id {iid}; {len(missing)} of {len(items)} evaluated images missing) is "
                                f"listed in {data.label} but missing; check --images points at the folder the "
                                f"annotation file describes")
    return items


@dataclass
class EvalSetup:
    """What an evaluation reads before its first image: the model's input and decoder, the COCO set,
    the evaluated images and the category of each class index."""

    input_name: str
    in_shape: tuple[int, int, int, int]
    fmt: str
    nc: int | None
    fmt_info: dict[str, Any]
    data: EvalData
    image_ids: list[int]
    classes: ClassMatch
    items: list[tuple[int, Path]]
    # a dynamic-shape export: its axes, where the run's size came from, its stride (shapes.dynamic_record)
    dynamic: dict[str, Any] = field(default_factory=dict)

    @property
    def coco(self) -> Any:
        return self.data.coco

    @property
    def cat_ids(self) -> list[int]:
        return self.classes.cat_ids


def prepare_eval(model_path: Path, source: DataSpec, subset: str | int | None,
                 settings: EvalSettings, subset_seed: int = 0, io_model: Path | None = None,
                 read: Callable[[DataSpec], EvalData] = read_data) -> EvalSetup:
    """Check and read everything an evaluation needs before its first image (the run's input check,
    tasks/steps/inputs.py, is this too). `io_model`: the ONNX model whose input, output and metadata
    describe `model_path` when that is not an ONNX file itself (an OpenVINO IR made from it).
    `read`: how the data source is read (the input check shares one read)."""
    model = check_model_file(Path(io_model or model_path))
    input_name, in_shape, _ = model_io(model, settings.imgsz)
    dynamic = dynamic_record(model, settings.imgsz)
    if dynamic:  # the outputs' shapes at the run's size tell the decoder the layout
        model = pin(model, in_shape)
    try:
        fmt, nc, fmt_info = resolve_format(model, settings)
    except DecodeError as e:  # say which model, like every other model check
        raise DecodeError(f"model {io_model or model_path}: {e}") from e
    del model  # the session loads its own copy; do not hold two in memory
    data = read(source)
    image_ids = select_subset(data.coco, subset, seed=subset_seed, label=data.label)
    classes = match_classes(data.names(), fmt_info.get("names"), nc, settings.class_map, data.label,
                            data.names_known)
    items = _check_image_files(data, image_ids)
    return EvalSetup(input_name, in_shape, fmt, nc, fmt_info, data, image_ids, classes, items, dynamic)


def _detect(sess: Any, setup: EvalSetup, items: Sequence[tuple[int, Path]], settings: EvalSettings,
            progress: ProgressFn | None) -> tuple[list[dict], list[float], list[float], list[float]]:
    """Detections of `items` in COCO result form, and each image's preprocess / inference / decode time."""
    size_hw = (setup.in_shape[2], setup.in_shape[3])
    input_name, coco, cat_ids = setup.input_name, setup.coco, setup.cat_ids
    dets: list[dict] = []
    t_pre, t_inf, t_dec = [], [], []
    batch = np.empty((1, 3, *size_hw), dtype=np.float32)  # one input buffer, refilled per image
    cat_arr = np.asarray(cat_ids, dtype=np.int64)
    warmed = False
    for k, (iid, path) in enumerate(items, 1):
        t0 = time.perf_counter()
        img = load_rgb(path)
        info = coco.imgs[iid]
        if (img.shape[1], img.shape[0]) != (info["width"], info["height"]):
            raise ImageError(f"image {path} is {img.shape[1]}x{img.shape[0]} but its annotation says "
                             f"{info['width']}x{info['height']}; the annotation belongs to another version of the image")
        _, lb = letterbox(img, size_hw, settings.preprocess, out=batch[0])
        x = batch
        t1 = time.perf_counter()
        pre_s = t1 - t0  # before any warm-up, which must count in no phase
        if not warmed:
            for _ in range(settings.warmup):
                sess.run(None, {input_name: x})
            warmed = True
            t1 = time.perf_counter()
        out = sess.run(None, {input_name: x})[0]
        t2 = time.perf_counter()
        d = decode(out, setup.fmt, settings.conf_thres, settings.iou_thres, settings.max_det)  # type: ignore[arg-type]
        if len(d):
            if int(d.classes.max()) >= len(cat_ids) or int(d.classes.min()) < 0:
                raise AnnotationError(f"the model predicted class index {int(d.classes.max())} but the class map has "
                                      f"{len(cat_ids)} entries; pass --class-map covering every class (int8: --set eval.class_map=...)")
            b = to_original(d.boxes, lb)
            # Whole-array rounding and one tolist(): per-detection Python float work cost as much
            # as the NMS itself.
            xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).round(3).tolist()
            dets.extend({"image_id": iid, "category_id": c, "bbox": bb, "score": sc} for bb, sc, c in
                        zip(xywh, d.scores.astype(np.float64).round(6).tolist(), cat_arr[d.classes].tolist()))
        t3 = time.perf_counter()
        t_pre.append(pre_s)
        t_inf.append(t2 - t1)
        t_dec.append(t3 - t2)
        if progress is not None:
            progress(k, len(items))
    return dets, t_pre, t_inf, t_dec


def _metrics(model_path: Path, setup: EvalSetup, settings: EvalSettings, dets: list[dict],
             rt: dict[str, Any], t_pre: list[float], t_inf: list[float], t_dec: list[float]) -> dict[str, Any]:
    ev = evaluate_detections(setup.coco, dets, setup.image_ids,
                             bootstrap=(settings.bootstrap_resamples, settings.bootstrap_seed))
    if len(dets) == 0:
        log.warning("model %s returned no detections above %.3g on %d images", model_path, settings.conf_thres,
                    len(setup.items))
    return {
        "map50_95": ev["stats"]["map50_95"],
        "map50": ev["stats"]["map50"],
        "images": len(setup.items),
        "provider": rt["provider"],
        "latency_ms": latency_stats(t_inf),
        "preprocess_ms": latency_stats(t_pre),
        "decode_ms": latency_stats(t_dec),
        "stats": ev["stats"],
        "per_class_ap": ev["per_class_ap"],
        "detections": ev["detections"],
        "gt_boxes": ev["gt_boxes"],
        "image_ids": setup.image_ids,
        **({"bootstrap": ev["bootstrap"]} if "bootstrap" in ev else {}),
        "model": {"path": str(model_path), "sha256": sha256_file(Path(model_path)), "input": setup.input_name,
                  "input_shape": list(setup.in_shape), "output_format": setup.fmt, "num_classes": setup.nc,
                  **setup.fmt_info},
        "data": {**setup.data.record, "sha256": setup.data.digest},
        "settings": settings.model_dump(),
        "class_map": setup.cat_ids,
        "classes": setup.classes.as_record(),
        "runtime": rt,
        "yolo_lowbit": __version__,
    }


def _run_times(sess: Any, x: np.ndarray, runs: int) -> list[float]:
    """Seconds of each of `runs` back-to-back runs of `sess` on `x`."""
    feed = {sess.get_inputs()[0].name: x}
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        out.append(time.perf_counter() - t0)
    return out


def deployed_latency(model_path: Path, settings: EvalSettings, threads: int | None, x: np.ndarray,
                     runs: int) -> tuple[dict[str, float], dict[str, Any]]:
    """p50/p90 of `runs` back-to-back runs of one input on a session set up as a deployment would be
    (ORT: worker threads spinning between runs), after a short warm-up; and that session's record."""
    sess, rt = open_session(Path(model_path), settings, threads, spin=True)
    _run_times(sess, x, min(settings.warmup, 5) or 1)
    return latency_stats(_run_times(sess, x, runs)), rt


def _first_input(setup: EvalSetup, settings: EvalSettings) -> np.ndarray:
    size_hw = (setup.in_shape[2], setup.in_shape[3])
    return letterbox(load_rgb(setup.items[0][1]), size_hw, settings.preprocess)[0][None].astype(np.float32)


def evaluate_model(model_path: Path, source: DataSpec, subset: str | int | None = None,
                   settings: EvalSettings | None = None, subset_seed: int = 0,
                   progress: ProgressFn | None = None, io_model: Path | None = None) -> dict[str, Any]:
    """Evaluate one model (ONNX, or an OpenVINO IR with `io_model` its ONNX source); returns the
    metrics dict that `flows/evaluate.py` writes. `progress(done, total)` is called after each image."""
    t0 = time.perf_counter()
    settings = settings or EvalSettings()
    model_path = Path(model_path)
    setup = prepare_eval(model_path, source, subset, settings, subset_seed, io_model)
    sess, rt = open_session(model_path, settings, settings.threads)
    dets, t_pre, t_inf, t_dec = _detect(sess, setup, setup.items, settings, progress)
    out = _metrics(model_path, setup, settings, dets, rt, t_pre, t_inf, t_dec)
    del sess  # one session at a time: the deployed one gets the cores alone
    if settings.deployed_runs and setup.items:
        lat, drt = deployed_latency(model_path, settings, settings.threads, _first_input(setup, settings),
                                    settings.deployed_runs)
        out["latency_deployed_ms"] = lat
        out["latency_deployed_session"] = drt["session"]
    out["eval_wall_s"] = round(time.perf_counter() - t0, 3)  # the bootstrap's share of it is reported
    return out


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges of n images in `shards` parts: concatenated in order they give
    back the unsharded image order, so the merged detections are the unsharded list itself."""
    edges = np.linspace(0, n, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def detect_shard(model_path: Path, source: DataSpec, subset: str | int | None,
                 settings: EvalSettings, subset_seed: int, bounds: tuple[int, int], threads: int | None,
                 progress: ProgressFn | None = None, io_model: Path | None = None) -> dict[str, Any]:
    """Detections of one shard of the evaluated images (no latency: shards run side by side)."""
    setup = prepare_eval(Path(model_path), source, subset, settings, subset_seed, io_model)
    items = setup.items[bounds[0]:bounds[1]]
    sess, rt = open_session(Path(model_path), settings, threads)
    dets, t_pre, t_inf, t_dec = _detect(sess, setup, items, settings, progress)
    return {"detections": dets, "image_ids": [i for i, _ in items], "bounds": list(bounds),
            "runtime": rt, "infer_ms_mean": latency_stats(t_inf)["mean"]}


def score_shards(model_path: Path, source: DataSpec, subset: str | int | None,
                 settings: EvalSettings, subset_seed: int, shards: Sequence[dict[str, Any]],
                 io_model: Path | None = None) -> dict[str, Any]:
    """The shards' detections merged in image order and scored once with pycocotools: the metrics of
    `evaluate_model` but for latency, which `time_models` measures apart."""
    setup = prepare_eval(Path(model_path), source, subset, settings, subset_seed, io_model)
    ordered = sorted(shards, key=lambda sh: sh["bounds"][0])
    got = [i for sh in ordered for i in sh["image_ids"]]
    if got != setup.image_ids:
        raise ValueError(f"the shards cover {len(got)} images, not the {len(setup.image_ids)} evaluated ones in order")
    dets = [d for sh in ordered for d in sh["detections"]]
    out = _metrics(Path(model_path), setup, settings, dets, ordered[0]["runtime"], [], [], [])
    out["shards"] = len(ordered)
    return out


def time_models(models: dict[str, Path], images: Sequence[Path], settings: EvalSettings, threads: int | None,
                rounds: int = 3, runtimes: dict[str, str] | None = None,
                size_hw: tuple[int, int] | None = None) -> dict[str, dict[str, Any]]:
    """Per-image inference latency of several models on the same letterboxed images, in interleaved
    rounds (model A on every image, then B, ... then A again) so that a slower moment of the machine
    falls on every model alike; each model warmed up first. `runtimes`: a model's runtime where it is
    not the settings' own."""
    runtimes = runtimes or {}
    own = {name: settings.model_copy(update={"runtime": runtimes.get(name, settings.runtime)}) for name in models}
    opened = {name: open_session(Path(p), own[name], threads) for name, p in models.items()}
    sessions = {name: s for name, (s, _) in opened.items()}
    batches = {}

    def hw(sess: Any) -> tuple[int, int]:
        """The model's own static size, else (a dynamic-shape export) the run's, `size_hw`."""
        shape = sess.get_inputs()[0].shape
        if all(isinstance(d, int) and d > 0 for d in shape[2:]):
            return int(shape[2]), int(shape[3])
        if size_hw is None:
            raise ValueError(f"a model has a dynamic input {shape}: pass size_hw, the size to time it at")
        return size_hw

    for name, sess in sessions.items():
        h, w = hw(sess)
        if (h, w) not in batches:
            batches[(h, w)] = [letterbox(load_rgb(p), (h, w), settings.preprocess)[0][None].astype(np.float32)
                               for p in images]
    # the deployed style beside each: the same model, threads spinning, one image back to back
    deployed = {name: open_session(Path(p), own[name], threads, spin=True)
                for name, p in models.items()} if settings.deployed_runs else {}
    times: dict[str, list[float]] = {name: [] for name in sessions}
    dtimes: dict[str, list[float]] = {name: [] for name in deployed}

    def inputs(sess: Any) -> list[np.ndarray]:
        return batches[hw(sess)]

    for sess in [*sessions.values(), *(s for s, _ in deployed.values())]:
        _run_times(sess, inputs(sess)[0], settings.warmup)
    per_round = -(-settings.deployed_runs // rounds)
    for _ in range(rounds):
        for name, sess in sessions.items():
            for x in inputs(sess):
                times[name] += _run_times(sess, x, 1)
        for name, (sess, _) in deployed.items():
            dtimes[name] += _run_times(sess, inputs(sess)[0], per_round)
    return {name: {"latency_ms": latency_stats(t), "images": len(images), "rounds": rounds, "runtime": opened[name][1],
                   **({"latency_deployed_ms": latency_stats(dtimes[name]),
                       "latency_deployed_session": deployed[name][1]["session"]} if name in deployed else {})}
            for name, t in times.items()}


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """A short text table: one row per evaluated model."""
    head = f"{'model':<10} {'mAP50-95':>9} {'mAP50':>7} {'p50 ms':>8} {'p90 ms':>8} {'images':>6}  provider"
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        lat = m["latency_ms"]
        lines.append(f"{name:<10} {m['map50_95']:>9.4f} {m['map50']:>7.4f} {lat['p50']:>8.2f} {lat['p90']:>8.2f} "
                     f"{m['images']:>6}  {m['provider']}")
    return "\n".join(lines)
