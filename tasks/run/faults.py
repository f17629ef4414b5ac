"""Fault-injection points for the crash tests (inert unless the environment asks for them).

With YOLO_LOWBIT_FAULT_PAUSE=<point> the process writes <point> to the file named by
YOLO_LOWBIT_FAULT_MARK and sleeps, so a test can SIGKILL it at exactly that moment: in the middle of
a step, after its work is done and before its results are published.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def fault_point(name: str) -> None:
    if os.environ.get("YOLO_LOWBIT_FAULT_PAUSE") != name:
        return
    mark = os.environ.get("YOLO_LOWBIT_FAULT_MARK")
    if mark:
        Path(mark).write_text(name)
    time.sleep(float(os.environ.get("YOLO_LOWBIT_FAULT_SLEEP", "3600")))
