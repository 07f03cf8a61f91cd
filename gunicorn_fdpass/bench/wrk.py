"""Running `wrk <https://github.com/wg/wrk>`_ and reading its results.

wrk is a closed-loop load generator written in C; it is much faster than anything in Python, so
the throughput scenarios use it when it is on ``PATH``. A small Lua script (:data:`LUA_SCRIPT`)
adds what wrk does not print by itself: responses per HTTP status and per ``X-Worker-Pid``,
and exact latency percentiles, as lines starting with ``fdpass-bench``. :func:`parse_output`
reads both wrk's own report and those lines (either may be missing).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Lua script given to wrk with ``-s``: counts statuses and worker pids in every wrk thread and
#: prints the totals (and microsecond latency figures) in ``done``.
LUA_SCRIPT = r"""
-- gunicorn-fdpass bench: responses per status and per X-Worker-Pid, exact percentiles.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  pids = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  local pid = headers["X-Worker-Pid"] or headers["x-worker-pid"]
  if pid == nil then
    for name, value in pairs(headers) do
      if string.lower(name) == "x-worker-pid" then pid = value end
    end
  end
  if pid ~= nil then pids[pid] = (pids[pid] or 0) + 1 end
end

function done(summary, latency, requests)
  local s, p = {}, {}
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("statuses") or {}) do s[k] = (s[k] or 0) + v end
    for k, v in pairs(thread:get("pids") or {}) do p[k] = (p[k] or 0) + v end
  end
  local e = summary.errors
  io.write(string.format(
    "fdpass-bench summary requests=%.0f duration_us=%.0f bytes=%.0f connect=%.0f read=%.0f " ..
    "write=%.0f status=%.0f timeout=%.0f\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout))
  io.write(string.format(
    "fdpass-bench latency_us mean=%.1f max=%.0f p50=%.0f p90=%.0f p99=%.0f\n",
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99)))
  for k, v in pairs(s) do io.write(string.format("fdpass-bench status %s %.0f\n", k, v)) end
  for k, v in pairs(p) do io.write(string.format("fdpass-bench pid %s %.0f\n", k, v)) end
end
"""

_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


class WrkError(RuntimeError):
    """wrk could not run, failed, or printed nothing we understand."""


@dataclass
class WrkResult:
    """What one wrk run measured. Latencies are in milliseconds (NaN when unknown)."""

    requests: int = 0
    duration_s: float = 0.0
    requests_per_s: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    pids: dict[int, int] = field(default_factory=dict)
    #: The CPUs the wrk process was allowed to run on, read back from it after it started.
    cpus: list[int] | None = None

    @property
    def socket_errors(self) -> int:
        """connect + read + write + timeout errors (not HTTP statuses)."""
        return sum(v for k, v in self.errors.items() if k != "status")


def available() -> str | None:
    """Path of the ``wrk`` executable, or None."""
    return shutil.which("wrk")


def version(path: str) -> str | None:
    """wrk's version line (``wrk 4.1.0 ...``), or None if it does not say."""
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    first = (proc.stdout or proc.stderr).strip().splitlines()
    return first[0].strip() if first else None


def _seconds(number: str, unit: str) -> float:
    return float(number) * _TIME_UNITS[unit]


def parse_output(text: str) -> WrkResult:
    """Parse wrk's report, preferring the exact ``fdpass-bench`` lines of :data:`LUA_SCRIPT`.

    Raises :class:`WrkError` when ``text`` holds neither a request count nor a summary line.
    """
    result = WrkResult()
    found = False
    done = re.search(r"^\s*([0-9]+) requests in " + _NUMBER + r"(us|ms|s|m|h)\b", text, re.M)
    if done:
        found = True
        result.requests = int(done.group(1))
        result.duration_s = _seconds(done.group(2), done.group(3))
    errors = re.search(r"Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), "
                       r"timeout ([0-9]+)", text)
    result.errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status": 0}
    if errors:
        for name, value in zip(("connect", "read", "write", "timeout"), errors.groups(),
                               strict=True):
            result.errors[name] = int(value)
    non_2xx = re.search(r"Non-2xx or 3xx responses: ([0-9]+)", text)
    if non_2xx:
        result.non_2xx_3xx = int(non_2xx.group(1))
        result.errors["status"] = result.non_2xx_3xx
    rps = re.search(r"^Requests/sec:\s+" + _NUMBER, text, re.M)
    if rps:
        result.requests_per_s = float(rps.group(1))
    latency = {"p50": math.nan, "p90": math.nan, "p99": math.nan, "mean": math.nan,
               "max": math.nan}
    thread_line = re.search(r"^\s*Latency\s+" + _NUMBER + r"(us|ms|s|m|h)\s+\S+\s+" + _NUMBER
                            + r"(us|ms|s|m|h)", text, re.M)
    if thread_line:
        latency["mean"] = _seconds(thread_line.group(1), thread_line.group(2)) * 1000.0
        latency["max"] = _seconds(thread_line.group(3), thread_line.group(4)) * 1000.0
    for pct, number, unit in re.findall(r"^\s*(50|90|99)%\s+" + _NUMBER + r"(us|ms|s|m|h)\s*$",
                                        text, re.M):
        latency[f"p{pct}"] = _seconds(number, unit) * 1000.0

    for line in text.splitlines():
        parts = line.split()
        if not parts or parts[0] != "fdpass-bench" or len(parts) < 2:
            continue
        kind, rest = parts[1], parts[2:]
        if kind == "summary":
            found = True
            fields = dict(item.split("=", 1) for item in rest if "=" in item)
            result.requests = int(float(fields.get("requests", "0")))
            result.duration_s = float(fields.get("duration_us", "0")) / 1e6
            for name in ("connect", "read", "write", "timeout", "status"):
                result.errors[name] = int(float(fields.get(name, "0")))
            result.non_2xx_3xx = result.errors["status"]
        elif kind == "latency_us":
            for item in rest:
                name, _, value = item.partition("=")
                if name in latency:
                    latency[name] = float(value) / 1000.0
        elif kind == "status" and len(rest) == 2:
            result.statuses[int(rest[0])] = int(float(rest[1]))
        elif kind == "pid" and len(rest) == 2 and rest[0].isdigit():
            result.pids[int(rest[0])] = int(float(rest[1]))
    if not found:
        raise WrkError("no result found in wrk's output:\n" + text[-2000:])
    if result.duration_s > 0:
        result.requests_per_s = result.requests / result.duration_s
    result.latency_ms = latency
    return result


def _affinity(pid: int) -> list[int] | None:
    """The CPUs process ``pid`` may run on (None if it already exited)."""
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return None


def run(url: str, *, connections: int, duration_s: float, threads: int = 2,
        headers: Sequence[str] = (), timeout_s: float = 5.0, path: str | None = None
        ) -> WrkResult:
    """Run wrk against ``url`` for ``duration_s`` (rounded up to whole seconds: wrk's unit).

    ``headers`` are ``"Name: value"`` strings (e.g. ``"Connection: close"``). The run is
    bounded: wrk is killed if it outlives its duration by more than ``timeout_s`` + 10 s.
    """
    exe = path or available()
    if exe is None:
        raise WrkError("wrk is not installed")
    seconds = max(1, math.ceil(duration_s))
    threads = max(1, min(threads, connections))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="fdpass-bench-",
                                     delete=False) as script:
        script.write(LUA_SCRIPT)
    try:
        cmd = [exe, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
               "--timeout", f"{max(1, math.ceil(timeout_s))}s", "--latency", "-s", script.name]
        for header in headers:
            cmd += ["-H", header]
        cmd.append(url)
        limit = seconds + timeout_s + 10.0
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) as proc:
            cpus = _affinity(proc.pid)
            try:
                stdout, stderr = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired as exc:
                proc.kill()
                proc.communicate()
                raise WrkError(f"wrk did not finish within {limit:.0f}s") from exc
        if proc.returncode != 0:
            raise WrkError(f"wrk exited with status {proc.returncode}: {stderr.strip()}")
        result = parse_output(stdout)
        result.cpus = cpus
        return result
    finally:
        os.unlink(script.name)
