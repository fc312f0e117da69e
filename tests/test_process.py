"""The process settings the command line makes for a long run."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

import engine.process
from engine.process import M_MMAP_THRESHOLD, MMAP_THRESHOLD, tune_allocator, tune_process


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


def test_tune_allocator_fixes_glibcs_mmap_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """On glibc, `tune_allocator` calls mallopt(M_MMAP_THRESHOLD, 128 KiB) once."""
    libc = _FakeLibc()
    monkeypatch.setattr(engine.process, "_libc", lambda: libc)
    monkeypatch.setattr(engine.process.sys, "platform", "linux")
    monkeypatch.setattr(engine.process.platform, "libc_ver", lambda: ("glibc", "2.36"))
    assert tune_allocator() is True
    assert libc.calls == [(M_MMAP_THRESHOLD, MMAP_THRESHOLD)] == [(-3, 131072)]


@pytest.mark.parametrize(("system", "libc_name"), [("darwin", ""), ("linux", "musl")])
def test_tune_allocator_leaves_other_c_libraries_alone(
    monkeypatch: pytest.MonkeyPatch, system: str, libc_name: str
) -> None:
    """Off glibc (macOS, musl) `tune_allocator` calls nothing and says so."""
    libc = _FakeLibc()
    monkeypatch.setattr(engine.process, "_libc", lambda: libc)
    monkeypatch.setattr(engine.process.sys, "platform", system)
    monkeypatch.setattr(engine.process.platform, "libc_ver", lambda: (libc_name, ""))
    assert tune_allocator() is False
    assert libc.calls == []


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's allocator only",
)
def test_a_freed_large_block_goes_back_to_the_system_after_tuning() -> None:
    """Without the tuning, freeing one 8 MB block makes glibc carve later large blocks from
    the heap, where they stay resident after they are freed; with it, each is unmapped."""
    script = textwrap.dedent(
        """
        import sys
        from engine.process import tune_allocator

        def rss_mb():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20

        if sys.argv[1] == "tuned":
            assert tune_allocator()
        block = bytearray(8 << 20)  # an mmap of its own: glibc's threshold rises to it
        del block
        keep = []
        for size in range(4, 8):  # 4 to 7 MB blocks, each with a small object after it
            big = bytearray(size << 20)
            keep.append(bytearray(1000))
            del big
        print(rss_mb())
        """
    )

    def rss(mode: str) -> float:
        done = subprocess.run(
            [sys.executable, "-c", script, mode],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return float(done.stdout.strip())

    assert rss("tuned") + 5 < rss("default")


def test_tune_process_tunes_the_collector_and_the_allocator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`tune_process` (what `python -m engine` runs first) makes both settings."""
    calls: list[str] = []
    monkeypatch.setattr(engine.process, "tune_gc", lambda: calls.append("gc"))
    monkeypatch.setattr(engine.process, "tune_allocator", lambda: calls.append("malloc") or True)
    tune_process()
    assert calls == ["gc", "malloc"]
