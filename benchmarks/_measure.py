"""The one place the benchmark scripts measure time and memory: a command's wall time and the peak RSS of its
process tree (`measure`, `peaks`), one process's peak by `wait4` (`timed`), a process's anonymous memory
(`rss_anon`), and the peak anonymous memory of this process while a block runs (`AnonPeak`)."""
from __future__ import annotations

import os
import subprocess
import threading
import time

import psutil


def rss_anon(pid: int) -> int:
    """A process's anonymous resident memory in bytes (RssAnon: what cannot be paged back to a file), 0 if unknown."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Run a command; return (seconds, peak RSS in bytes of the process tree, combined output)."""
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    peak = 0
    ps = psutil.Process(proc.pid)
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.05)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    out, _ = proc.communicate()
    done.set()
    t.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{out[-3000:]}")
    return time.time() - start, peak, out


def timed(cmd: list[str]) -> tuple[float, int]:
    """Run a command (output discarded; stderr shown on failure); return (seconds, the process's peak RSS in bytes
    from the kernel's own count, `wait4`'s ru_maxrss). No sampling thread runs beside it, so a timing of a few
    seconds on two cores is not slowed by the measuring (`measure` walks /proc every 50 ms); the peak is the
    process's, not its children's."""
    import os
    import tempfile

    with tempfile.TemporaryFile() as err:
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.time() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{cmd} failed:\n{err.read().decode(errors='replace')[-3000:]}")
    return seconds, usage.ru_maxrss * 1024


def peaks(cmd: list[str]) -> tuple[float, int, int]:
    """Run a command (output discarded); return (seconds, peak RSS, peak RssAnon) of its process tree, sampled
    every 50 ms."""
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = [0, 0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                tree = [ps, *ps.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree))
                peak[1] = max(peak[1], sum(rss_anon(p.pid) for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.05)

    threading.Thread(target=poll, daemon=True).start()
    _, err = proc.communicate()
    done.set()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {err[-2000:]}")
    return time.time() - t0, peak[0], peak[1]


class AnonPeak:
    """The highest RssAnon of this process (MiB), sampled every 50 ms from creation until `stop()`."""

    def __init__(self) -> None:
        self.peak, self._stop = self._now(), False
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    @staticmethod
    def _now() -> float:
        return rss_anon(os.getpid()) / 2**20

    def _watch(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self._now())
            time.sleep(0.05)

    def stop(self) -> float:
        self._stop = True
        self._thread.join()
        return max(self.peak, self._now())
