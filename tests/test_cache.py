import os
import threading

from tasks.run.cache import StepCache, cache_key


def test_key_depends_on_content_not_order():
    assert cache_key("s", {"a": 1, "b": [1, 2]}) == cache_key("s", {"b": [1, 2], "a": 1})
    assert cache_key("s", {"a": 1}) != cache_key("s", {"a": 2})
    assert cache_key("s", {"a": 1}) != cache_key("t", {"a": 1})


def test_put_get_roundtrip_and_corruption_is_detected(tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 1000)
    c = StepCache(tmp_path / "cache")
    e = c.put("step", "k1", {"f.bin": src}, {"note": 1})
    assert c.get("step", "k1").meta == {"note": 1}
    # truncate the cached copy: the entry must be refused, set aside and reported
    os.truncate(e.file("f.bin"), 500)
    assert c.get("step", "k1") is None
    assert c.corrupt and "f.bin" in c.corrupt[0]
    assert src.read_bytes() == b"x" * 1000  # the source was never touched
    assert c.get("step", "k1") is None  # quarantined, so a plain miss now
    assert c.put("step", "k1", {"f.bin": src}, {}).files


def test_concurrent_puts_leave_one_complete_entry(tmp_path):
    srcs = []
    for i in range(4):
        p = tmp_path / f"s{i}.bin"
        p.write_bytes(b"same")
        srcs.append(p)
    c = StepCache(tmp_path / "cache")
    threads = [threading.Thread(target=c.put, args=("step", "k", {"f": s}, {})) for s in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    e = c.get("step", "k")
    assert e is not None and e.file("f").read_bytes() == b"same"
    assert not [p for p in (tmp_path / "cache" / "step").iterdir() if p.name.startswith(".tmp")]


WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from tasks.run.cache import StepCache
src, cache = Path(sys.argv[1]), Path(sys.argv[2])
while time.time() < float(sys.argv[3]):  # start together
    pass
e = StepCache(cache).put("step", "k" * 64, {{"big.bin": src}}, {{"writer": sys.argv[4]}})
print(e.meta["writer"])
"""


def test_writers_in_several_processes_never_show_a_partial_entry(tmp_path):
    """Four processes put the same key at once (as workers sharing a cache folder do) while this one
    reads it in a loop: a reader sees no entry or a complete one, never a part; one entry remains."""
    import subprocess
    import sys
    import time

    from conftest import ROOT

    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (32 * 1024))  # 8 MiB: long enough to be caught half-copied
    cache = tmp_path / "cache"
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT)), str(big), str(cache), str(start),
                               f"w{i}"], stdout=subprocess.PIPE, text=True) for i in range(4)]
    reader, seen = StepCache(cache), set()
    while any(p.poll() is None for p in procs):
        e = reader.get("step", "k" * 64)
        if e is not None:
            assert e.file("big.bin").read_bytes() == big.read_bytes()
            seen.add(e.meta["writer"])
    outs = {p.communicate()[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert not reader.corrupt
    assert len(outs) == 1 and seen <= outs  # every writer got the first complete entry
    names = [d.name for d in (cache / "step").iterdir()]
    assert names == ["k" * 64]
