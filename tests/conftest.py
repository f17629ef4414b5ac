from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

SHARED = ROOT.parent / "shared"


def shared_path(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"{p} is absent: real-data checks need ../shared next to the repo (CI has it)")
    return p


@pytest.fixture
def tiny_model(tmp_path):
    from tiny import tiny_detector

    return tiny_detector(tmp_path / "models" / "tiny.onnx")


@pytest.fixture
def tiny_data(tmp_path):
    from tiny import tiny_coco, tiny_images

    images, ann = tiny_coco(tmp_path / "coco", n=6)
    calib = tmp_path / "calib"
    tiny_images(calib, 8, seed=1, prefix="cal")
    return {"images": images, "annotations": ann, "calib_images": calib}
