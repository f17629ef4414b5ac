"""The calibration step: the run's calibration tensor, checked (a user's .npy/.npz) or built from
images with the evaluator's letterbox, cached by the images' bytes. The images are a seeded draw from
--calib-images, or, with --data and no calibration named, from the dataset's train split."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from tasks.config import ConfigError, RunConfig
from tasks.evaluation.sources.table import reader
from tasks.quantization.calibration import (check_count, check_overlap, load_calib_tensor, pick_calib_images,
                                            pick_files, write_calib_npy)
from tasks.run.cache import cache_key
from tasks.context import RunContext, timed
from tasks.run.progress import Progress
from tasks.run.rundir import atomic_write_json, sha256_file


def calibration_images(cfg: RunConfig) -> tuple[list[Path], dict[str, str]]:
    """The images the run calibrates on, in their seeded order, and where they came from. Refused when
    the source holds fewer than --calib-count: calibrating on fewer than asked changes the scales
    without a word."""
    if cfg.calib_images is not None:
        return pick_calib_images(cfg.calib_images, cfg.calib_count, cfg.calib_seed), {
            "folder": str(cfg.calib_images), "order": "seeded permutation of the sorted folder listing"}
    spec = cfg.eval_data()
    pool = reader(spec).calibration_images(spec)
    if pool is None:
        raise ConfigError("calibration needs --calib FILE.npy|.npz or --calib-images DIR (or --data DATA.yaml)")
    check_count(pool, cfg.calib_count, f"the train split of {cfg.data}")
    return pick_files(pool, cfg.calib_count, cfg.calib_seed), {
        "folder": f"{cfg.data} (train split)", "order": "seeded permutation of the sorted train split"}


def step_calibration(ctx: RunContext) -> dict[str, Any]:
    """Calibration tensor: checked user tensor, or built from images; calibration.json in the run."""
    t0 = time.perf_counter()
    cfg, m = ctx.cfg, ctx.model
    out_json = ctx.run_dir / "quantize-int8" / "calibration.json"
    if cfg.calib is not None:
        # A user tensor is used in place (memory-mapped); its bytes' hash is the cache identity.
        _, info = load_calib_tensor(cfg.calib, m["input"], m["input_shape"], cfg.eval.preprocess)
        info.update({"tensor_path": str(cfg.calib), "cached": False})
        atomic_write_json(out_json, info)
        return timed(t0, info)
    files, where = calibration_images(cfg)
    eval_files = [Path(p) for p in m["eval_image_files"]]
    overlap = check_overlap(files, eval_files, cfg.allow_calib_overlap)
    image_hashes = [[p.name, sha256_file(p)] for p in files]
    key = cache_key("calibration", {"images": image_hashes, "input_shape": m["input_shape"],
                                    "preprocess": cfg.eval.preprocess.model_dump(), "versions": ctx.key_versions})
    entry = ctx.cache.get("calibration", key)
    cached = entry is not None
    if entry is None:
        with tempfile.TemporaryDirectory(dir=ctx.run_dir) as td:
            with Progress("calibration images") as progress:
                sha = write_calib_npy(Path(td) / "calib.npy", files, m["input_shape"], cfg.eval.preprocess, progress)
            entry = ctx.cache.put("calibration", key, {"calib.npy": Path(td) / "calib.npy"}, {"sha256": sha})
    tensor = entry.file("calib.npy")
    info = {"source": "images", "folder": where["folder"], "count": len(files),
            "shape": [len(files), *m["input_shape"][1:]], "sha256": entry.files["calib.npy"],
            "seed": cfg.calib_seed, "order": where["order"],
            "images": [n for n, _ in image_hashes], "files": [str(p) for p in files],
            "image_sha256": dict(image_hashes),
            "overlap_with_eval": overlap, "tensor_path": str(tensor), "cached": cached}
    atomic_write_json(out_json, info)
    return timed(t0, info)
