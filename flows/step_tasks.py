"""How a step of tasks/pipeline.py becomes a Prefect task: its retry policy (bad input fails at once),
and its body on whichever process runs it (progress sinks, log levels, where it ran)."""

from __future__ import annotations

from pydantic import ValidationError

from flows.common import quiet_library_logs
from tasks.config import ConfigError
from tasks.evaluation.coco_eval import AnnotationError, SubsetError
from tasks.evaluation.decode import DecodeError
from tasks.evaluation.preprocess import ImageError
from tasks.evaluation.runtime import ModelError, ProviderError
from tasks.evaluation.smoke import SmokeError
from tasks.pipeline import placed
from tasks.quantization.calibration import CalibrationError
from tasks.run.progress import log_sink, set_sink_factories


# Errors that say the input is wrong: retrying cannot help, so they fail at once.
DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError,
    ValueError, ValidationError, CalibrationError, AnnotationError, SubsetError, ConfigError, DecodeError,
    ImageError, ModelError, ProviderError, SmokeError, MemoryError, KeyboardInterrupt)


def retry_transient_only(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry I/O hiccups and runtime failures, never bad input."""
    try:
        state.result()
    except DETERMINISTIC_ERRORS:
        return False
    except Exception:
        return True
    return True


def prefect_progress_sinks() -> None:
    """Long loops (tasks/run/progress.py) report on the run's console and as a progress artifact on the
    run's page (Prefect's create/update_progress_artifact), each at most every few seconds."""
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


def run_step(fn, args: tuple, runner: str):
    """A step as a Prefect task body, on whichever process runs it: the run's progress sinks and log
    levels set there, and where it ran recorded in its result (tasks/pipeline.py:placed)."""
    quiet_library_logs()
    prefect_progress_sinks()
    return placed(fn, args, runner)
