"""Shared flow plumbing: import path, offline Prefect settings, retry policy, logging."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
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

    from tasks.quantization.calibration import CalibrationError
    from tasks.evaluation.coco_eval import AnnotationError, SubsetError
    from tasks.config import ConfigError
    from tasks.evaluation.decode import DecodeError
    from tasks.evaluation.preprocess import ImageError
    from tasks.evaluation.runtime import ModelError, ProviderError
    from tasks.evaluation.smoke import SmokeError

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


def prefect_progress_sinks() -> None:
    """Long loops (tasks/run/progress.py) report on the run's console and as a progress artifact on the
    run's page (Prefect's create/update_progress_artifact), each at most every few seconds."""
    from tasks.run.progress import log_sink, set_sink_factories

    def console(label: str, unit: str):
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            return log_sink(label, unit, get_run_logger())
        except MissingContextError:
            return log_sink(label, unit)

    def artifact(label: str, unit: str):
        from prefect.artifacts import create_progress_artifact, update_progress_artifact
        from prefect.context import FlowRunContext, TaskRunContext

        if TaskRunContext.get() is None and FlowRunContext.get() is None:
            return None
        ident = None

        def sink(tick) -> None:
            nonlocal ident
            text = tick.text()
            if ident is None:
                ident = create_progress_artifact(progress=tick.percent, description=text)
            else:
                update_progress_artifact(ident, progress=tick.percent, description=text)

        return sink

    set_sink_factories([console, artifact])


def ensure_prefect_home() -> None:
    """Create PREFECT_HOME (with its parents) before a temporary server needs it: Prefect 3.9 creates
    only the last folder, and with a missing parent its temporary server never answers and the run
    fails after the whole startup timeout with 'Timed out while attempting to connect'."""
    from prefect.settings import get_current_settings

    Path(get_current_settings().home).expanduser().mkdir(parents=True, exist_ok=True)


def run_step(fn, args: tuple, runner: str):
    """A step as a Prefect task body, on whichever process runs it: the run's progress sinks and log
    levels set there, and where it ran recorded in its result (tasks/pipeline.py:placed)."""
    from tasks.pipeline import placed

    quiet_library_logs()
    prefect_progress_sinks()
    return placed(fn, args, runner)


@contextmanager
def api_for_workers():
    """With no PREFECT_API_URL, the flow's process would start a temporary server that only it can
    find: worker processes would each start their own, and their task runs would not be in the run.
    So the temporary server is started here and its URL put in the environment the workers inherit."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if get_current_settings().api.url:
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")))
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield
    finally:
        from prefect.logging.handlers import APILogHandler

        APILogHandler().flush()  # the run's last log lines, before their server goes
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()
