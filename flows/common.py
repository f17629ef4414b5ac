"""Shared flow plumbing: import path, offline Prefect settings, retry policy, logging."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python flows/x.py` puts flows/ on the path, not the repo root
    sys.path.insert(0, str(ROOT))


def offline_defaults() -> None:
    """No telemetry and no update checks: this tool runs where only package registries are reachable."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # The temporary server's first start on a fresh PREFECT_HOME runs its database migrations; on a
    # busy 2-core machine that was seen to pass Prefect's 20 s default and fail the run.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


# Errors that say the input is wrong: retrying cannot help, so they fail at once.
def _deterministic_types() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from tasks.calibration import CalibrationError
    from tasks.coco_eval import AnnotationError, SubsetError
    from tasks.config import ConfigError
    from tasks.decode import DecodeError
    from tasks.preprocess import ImageError
    from tasks.runtime import ModelError, ProviderError
    from tasks.smoke import SmokeError

    return (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError,
            ValueError, ValidationError, CalibrationError, AnnotationError, SubsetError, ConfigError, DecodeError,
            ImageError, ModelError, ProviderError, SmokeError, MemoryError, KeyboardInterrupt)


def retry_transient_only(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry I/O hiccups and runtime failures, never bad input."""
    try:
        state.result()
    except _deterministic_types():
        return False
    except Exception:
        return True
    return True


def quiet_library_logs() -> None:
    logging.getLogger("modelopt").setLevel(logging.WARNING)
