"""Progress of the long loops (evaluation, calibration images, calibration passes): images done, rate
and time left, reported to sinks at most every few seconds so the loop itself pays one clock read per
item. The default sink logs; the flow swaps in its own (the run's console and a Prefect progress
artifact) through `set_sink_factories`, so nothing here knows Prefect."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tick:
    label: str
    unit: str
    done: int
    total: int
    elapsed_s: float
    final: bool

    @property
    def rate(self) -> float:
        return self.done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0

    def text(self) -> str:
        line = f"{self.label}: {self.done}/{self.total} {self.unit}, {self.rate:.1f}/s"
        if self.final:
            return f"{line}, done in {_duration(self.elapsed_s)}"
        left = (self.total - self.done) / self.rate if self.rate > 0 else float("nan")
        return f"{line}, {_duration(left)} left"


def _duration(s: float) -> str:
    if s != s:  # nan
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Sink(Protocol):
    def __call__(self, tick: Tick) -> None: ...


SinkFactory = Callable[[str, str], "Sink | None"]


def log_sink(label: str, unit: str, logger: logging.Logger | logging.LoggerAdapter = log) -> Sink:
    """Logs ticks to `logger`; a loop that finished before its first tick stays silent (the step
    reports it)."""
    spoke = False

    def sink(tick: Tick) -> None:
        nonlocal spoke
        if tick.final and not spoke:
            return
        spoke = True
        logger.info("%s", tick.text())

    return sink


_FACTORIES: list[SinkFactory] = [log_sink]


def set_sink_factories(factories: list[SinkFactory]) -> None:
    """Replace the sinks every new Progress reports to (process-wide: the flow calls this once)."""
    _FACTORIES[:] = factories


class Progress:
    """`progress(done, total)` once per item; `close()` at the end. A `done` lower than the last one
    starts a new pass (a calibration reader rewound), reported under the same label."""

    def __init__(self, label: str, unit: str = "images", every_s: float = 5.0) -> None:
        self.label, self.unit, self.every_s = label, unit, every_s
        self._sinks: list[Sink] | None = None
        self._t0 = time.perf_counter()
        self._next = self._t0 + every_s
        self._last: tuple[int, int] = (0, 0)
        self._passes = 1

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < self._last[0]:
            self._finish()
            self._passes += 1
            self._t0, self._next = now, now + self.every_s
        self._last = (done, total)
        if done >= total:
            if self._next != float("inf"):
                self._emit(final=True, now=now)
        elif now >= self._next:
            self._next = now + self.every_s
            self._emit(final=False, now=now)

    def _emit(self, final: bool, now: float) -> None:
        if self._sinks is None:
            self._sinks = [s for s in (f(self.label, self.unit) for f in _FACTORIES) if s is not None]
        done, total = self._last
        label = self.label if self._passes == 1 else f"{self.label} (pass {self._passes})"
        tick = Tick(label, self.unit, done, total, now - self._t0, final)
        for sink in self._sinks:
            try:
                sink(tick)
            except Exception as e:  # progress must never fail the work it reports on
                log.debug("progress sink failed: %s", e)
        if final:
            self._next = float("inf")

    def _finish(self) -> None:
        done, total = self._last
        if total and done < total and self._next != float("inf"):
            self._emit(final=True, now=time.perf_counter())

    def close(self) -> None:
        """A loop that stopped short (an error) reports where it stopped."""
        self._finish()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


ProgressFn = Callable[[int, int], None]
