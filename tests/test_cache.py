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
