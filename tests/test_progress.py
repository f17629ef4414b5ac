"""Progress of long loops: ticks at most every interval, one final line, passes, sinks that fail."""

from __future__ import annotations

import logging

import numpy as np

from tasks.run import progress as P
from tasks.quantization.calibration import CalibReader


def _collect(monkeypatch):
    ticks: list[P.Tick] = []
    monkeypatch.setattr(P, "_FACTORIES", [lambda label, unit: ticks.append])
    return ticks


def test_ticks_are_throttled_and_the_end_is_reported_once(monkeypatch):
    ticks = _collect(monkeypatch)
    prog = P.Progress("evaluate fp32", every_s=3600)
    for k in range(1, 101):
        prog(k, 100)
    prog(100, 100)
    prog.close()
    assert [(t.done, t.final) for t in ticks] == [(100, True)]
    assert ticks[0].percent == 100.0 and "100/100 images" in ticks[0].text() and "done in" in ticks[0].text()

    ticks.clear()
    prog = P.Progress("evaluate fp32", every_s=0)
    for k in range(1, 4):
        prog(k, 3)
    assert [(t.done, t.final) for t in ticks] == [(1, False), (2, False), (3, True)]
    assert "left" in ticks[0].text()


def test_a_rewound_reader_is_a_new_pass_and_a_short_loop_reports_where_it_stopped(monkeypatch):
    ticks = _collect(monkeypatch)
    reader = CalibReader(np.zeros((3, 3, 8, 8), np.float32), "images")
    reader.progress = P.Progress("calibrate", unit="samples", every_s=3600)
    for _ in range(2):
        reader.rewind()
        while reader.get_next() is not None:
            pass
    assert [(t.label, t.done, t.final) for t in ticks] == [("calibrate", 3, True), ("calibrate (pass 2)", 3, True)]

    ticks.clear()
    with P.Progress("evaluate int8", every_s=3600) as prog:
        prog(1, 5)
        prog(2, 5)
    assert [(t.done, t.total, t.final) for t in ticks] == [(2, 5, True)]


def test_a_failing_sink_never_fails_the_loop_and_the_log_sink_stays_quiet_for_short_loops(monkeypatch, caplog):
    def broken(label, unit):
        def sink(tick):
            raise RuntimeError("server gone")
        return sink

    monkeypatch.setattr(P, "_FACTORIES", [broken, P.log_sink])
    with caplog.at_level(logging.INFO, logger="tasks.run.progress"):
        with P.Progress("short", every_s=3600) as prog:
            prog(1, 1)
        assert not [r for r in caplog.records if r.name == "tasks.run.progress" and r.levelno >= logging.INFO]
        with P.Progress("long", every_s=0) as prog:
            prog(1, 2)
            prog(2, 2)
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.run.progress" and r.levelno == logging.INFO]
    assert lines[0].startswith("long: 1/2 images") and lines[-1].startswith("long: 2/2 images")
