"""Shared flow plumbing: import path, offline Prefect settings, Prefect's home, the API for workers,
log levels. Nothing here imports the project's modules (flows/evaluate.py starts light); how a step
becomes a Prefect task is flows/step_tasks.py."""

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


def quiet_library_logs() -> None:
    logging.getLogger("modelopt").setLevel(logging.WARNING)


def ensure_prefect_home() -> None:
    """Create PREFECT_HOME (with its parents) before a temporary server needs it: Prefect 3.9 creates
    only the last folder, and with a missing parent its temporary server never answers and the run
    fails after the whole startup timeout with 'Timed out while attempting to connect'."""
    from prefect.settings import get_current_settings

    Path(get_current_settings().home).expanduser().mkdir(parents=True, exist_ok=True)


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
