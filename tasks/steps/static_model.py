"""A dynamic-shape export's static copy at the run's size (tasks/evaluation/shapes.py says why),
cached by the export's bytes and the size: every step of the run measures and quantizes this copy."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import onnx

from tasks.evaluation.shapes import pin
from tasks.run.cache import StepCache, cache_key
from tasks.run.rundir import sha256_file


def static_copy(model_path: Path, model_sha: str, shape: Sequence[int], dynamic: dict[str, Any], cache: StepCache,
                versions: dict[str, str], work_dir: Path) -> tuple[Path, dict[str, Any]]:
    """(the static copy's path, the record of what was pinned) for a dynamic-shape export, whose
    `dynamic` record (`shapes.dynamic_record`) the input check made. The copy keeps the export's file
    name, so the run's models are named after it."""
    key = cache_key("static-model", {"model": model_sha, "shape": list(shape), "versions": versions})
    name = Path(model_path).name
    entry = cache.get("static-model", key)
    if entry is None:
        with tempfile.TemporaryDirectory(dir=work_dir) as td:
            onnx.save(pin(onnx.load(str(model_path)), shape), str(Path(td) / name))
            entry = cache.put("static-model", key, {name: Path(td) / name}, {})
    path = entry.file(name)
    return path, {"path": str(model_path), "sha256": model_sha, **dynamic, "run_at": list(shape),
                  "static_copy": str(path), "static_copy_sha256": sha256_file(path)}
