"""The extraction loop hands freed heap pages back, so a long run does not grow by fragmentation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from toolkit.extract.memory import release_free_memory


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim and /proc are Linux's")
def test_release_free_memory_returns_a_fragmented_heap_to_the_system():
    blocks = [bytearray(4000) for _ in range(50_000)]  # ~200 MB of malloc'd blocks
    keep = blocks[::50]  # every 50th survives, so the freed pages are not at the heap's top
    del blocks
    before = _rss_mb()
    assert release_free_memory() is True
    assert before - _rss_mb() > 100, "malloc_trim should return most of the ~196 MB just freed"
    del keep  # held until here, so the freed pages above were not at the heap's top
