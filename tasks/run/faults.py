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
    """With YOLO_LOWBIT_FAULT_ONCE=1 only the first process to arrive pauses (it creates the mark,
    holding its pid): several workers share the setting, and the one that is killed is the one that
    paused; the step rescheduled elsewhere then passes the point."""
    if os.environ.get("YOLO_LOWBIT_FAULT_PAUSE") != name:
        return
    mark = os.environ.get("YOLO_LOWBIT_FAULT_MARK")
    if mark:
        if os.environ.get("YOLO_LOWBIT_FAULT_ONCE") == "1":
            try:
                with open(mark, "x") as f:
                    f.write(f"{name} {os.getpid()}")
            except FileExistsError:
                return
        else:
            Path(mark).write_text(f"{name} {os.getpid()}")
    time.sleep(float(os.environ.get("YOLO_LOWBIT_FAULT_SLEEP", "3600")))
