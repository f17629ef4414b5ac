"""Atomic file writes and run-folder layout.

Everything a run writes appears under its final name only when complete: it is written to a
temporary name in the same folder, flushed, fsynced and renamed (rename is atomic on POSIX within
one file system). A reader therefore sees either the old file, the new one, or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Iterator


def _tmp_path(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file that appears at `path` only when the block ends without error (written
    under a temporary name, fsynced, renamed); on error the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    with atomic_writer(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_copy(src: Path, dst: Path) -> Path:
    """Copy under a temporary name, then rename. A real copy, not a hard link: damage to a cache
    entry must never reach a finished run's artifacts (or the other way round)."""
    with open(src, "rb") as s, atomic_writer(dst) as d:
        shutil.copyfileobj(s, d, 1 << 20)
    return Path(dst)


def temp_sibling(path: Path) -> Path:
    """A temporary path next to `path` for tools that insist on writing a file themselves."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _tmp_path(path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_run_id() -> str:
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


RUN_SUBDIRS = ("onnx", "quantize-int8", "fp32-coco", "int8-coco", "results")


def create_run_dir(run_root: Path, run_id: str) -> Path:
    """Make `run_root/run_id` with its sub-folders; a run id already used is refused."""
    run_root = Path(run_root)
    try:
        run_root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"run root {run_root} cannot be created ({e.strerror}); pass a writable --run-root") from e
    if not os.access(run_root, os.W_OK):
        raise PermissionError(f"run root {run_root} is not writable; pass a writable --run-root")
    run_dir = run_root / run_id
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise FileExistsError(f"run folder {run_dir} already exists; choose another --run-id") from None
    for sub in RUN_SUBDIRS:
        (run_dir / sub).mkdir()
    set_run_state(run_dir, "running")
    return run_dir


def set_run_state(run_dir: Path, state: str, **extra: Any) -> None:
    """`run_dir/STATE.json` says running / completed / failed, so a dead run never looks finished."""
    atomic_write_json(Path(run_dir) / "STATE.json",
                      {"state": state, "updated": datetime.now().isoformat(timespec="seconds"),
                       "pid": os.getpid(), "host": socket.gethostname(), **extra})


def read_run_state(run_dir: Path) -> dict[str, Any]:
    """STATE.json, with a 'running' run whose process is gone on this host reported as 'dead'."""
    p = Path(run_dir) / "STATE.json"
    if not p.is_file():
        return {"state": "missing"}
    st = json.loads(p.read_text())
    if st.get("state") == "running" and st.get("host") == socket.gethostname():
        try:
            os.kill(int(st["pid"]), 0)
        except ProcessLookupError:
            st["state"] = "dead"
        except (PermissionError, KeyError, ValueError):
            pass
    return st
