"""A content-addressed step cache that survives process restarts.

A step's key is the sha256 of what determines its output: the sha256 of each input file's bytes,
its own settings and the versions of the libraries that compute it; never a path string or a run
id. An entry is a folder `<root>/<step>/<key>/` whose MANIFEST.json records each file's sha256 at
write time; a read re-checks them, so a truncated or altered entry is detected, set aside and
recomputed. Entries are built in a temporary folder and renamed into place, so concurrent runs
never see a half-written entry (the first complete one wins).

Shared storage: the same holds for writers on several machines sharing the folder, as long as a rename
within one folder is atomic there (local file systems, NFS): an entry appears whole or not at all; a
second writer of the same key finds the first's entry and uses it. Damage reports travel back in each
step's result (tasks/pipeline.py), since a worker's StepCache is a copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.run.rundir import atomic_copy, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"


def cache_key(step: str, payload: dict[str, Any]) -> str:
    blob = json.dumps({"step": step, **payload}, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class CacheEntry:
    path: Path
    meta: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)

    def file(self, name: str) -> Path:
        return self.path / name


@dataclass
class StepCache:
    root: Path
    corrupt: list[str] = field(default_factory=list)  # entries found damaged during this run

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    def _dir(self, step: str, key: str) -> Path:
        return self.root / step / key

    def get(self, step: str, key: str) -> CacheEntry | None:
        d = self._dir(step, key)
        man = d / MANIFEST
        if not man.is_file():
            return None
        try:
            data = json.loads(man.read_text())
            files: dict[str, str] = data["files"]
            for name, digest in files.items():
                if not (d / name).is_file() or sha256_file(d / name) != digest:
                    raise ValueError(f"{name} does not match the sha256 recorded when it was written")
        except (ValueError, KeyError, OSError) as e:
            self._quarantine(d, f"{step}/{key[:12]}: {e}")
            return None
        return CacheEntry(d, data.get("meta", {}), files)

    def _quarantine(self, d: Path, why: str) -> None:
        log.warning("cache entry %s is damaged (%s); recomputing", d, why)
        self.corrupt.append(why)
        try:
            os.replace(d, d.with_name(f".corrupt-{d.name}-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"))
        except OSError:
            # Another reader set it aside first (and a writer may already have put a good entry in its
            # place): deleting by name here could remove that one, so leave it.
            pass

    def put(self, step: str, key: str, files: dict[str, Path], meta: dict[str, Any]) -> CacheEntry:
        """Store `files` (name -> source path) under the key; returns the entry that ends up there."""
        final = self._dir(step, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        # host and pid in the name: writers on several machines share this folder (shared storage)
        tmp = final.parent / f".tmp-{key[:16]}-{socket.gethostname()}-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
        try:
            digests = {}
            for name, src in files.items():
                atomic_copy(Path(src), tmp / name)
                digests[name] = sha256_file(tmp / name)
            (tmp / MANIFEST).write_text(json.dumps({"step": step, "key": key, "files": digests, "meta": meta},
                                                   indent=2, default=str))
            try:
                os.rename(tmp, final)
            except OSError:
                # Another run finished the same entry first: theirs is as good as ours.
                existing = self.get(step, key)
                if existing is not None:
                    return existing
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return CacheEntry(final, meta, digests)
