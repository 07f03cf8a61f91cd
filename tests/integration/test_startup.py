"""Startup refusals happen before Gunicorn binds anything (issue 14, item 3).

A setting this worker cannot honour (``--reuse-port``, a misspelt or wrongly cased
``FDPASS_*`` name, a bad value) stops a real ``gunicorn`` with exit status 1 and the message
naming it, before ``Listening at:`` and before anything else is logged, whichever way the
worker class is chosen: ``-k gunicorn_fdpass.Worker``, ``-k egg:gunicorn-fdpass#fdpass`` or
``worker_class`` in a config file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from gunicorn_fdpass.settings import FdpassSettings
from tests.support.deploy import Launched
from tests.support.server import REPO_ROOT

WAYS = {
    "dotted": ["-k", "gunicorn_fdpass.Worker"],
    "entry point": ["-k", "egg:gunicorn-fdpass#fdpass"],
    "config file": [],  # worker_class = "gunicorn_fdpass.Worker" in the config file
    "asgi": ["-k", "gunicorn_fdpass.ASGIWorker"],
}

UNKNOWN = "gunicorn_fdpass knows: " + ", ".join(
    sorted(f"FDPASS_{f.name.upper()}" for f in fields(FdpassSettings)))

# (extra command-line arguments, config-file lines, environment, the whole message)
PROBLEMS: dict[str, tuple[list[str], str, dict[str, str], str]] = {
    "reuse-port flag": (
        ["--reuse-port"], "", {},
        "reuse_port (--reuse-port) cannot be used with gunicorn_fdpass.Worker: with it every "
        "worker opens its own listening socket, but this worker relies on the master owning "
        "the listeners and handing each connection to a free worker. Remove reuse_port (the "
        "master already spreads load evenly)."),
    "reuse_port in the config": (
        [], "reuse_port = True\n", {},
        "reuse_port (--reuse-port) cannot be used with gunicorn_fdpass.Worker"),
    "misspelt name with -e": (
        ["-e", "FDPASS_HEAD_TIMOUT=5"], "", {},
        "unknown setting FDPASS_HEAD_TIMOUT (did you mean FDPASS_HEAD_TIMEOUT?); " + UNKNOWN),
    "wrong case in the environment": (
        [], "", {"fdpass_head_timeout": "5"},
        "unknown setting fdpass_head_timeout (did you mean FDPASS_HEAD_TIMEOUT?); " + UNKNOWN),
    "bad value in raw_env": (
        [], 'raw_env = ["FDPASS_MAX_QUEUE=lots"]\n', {},
        "bad value for FDPASS_MAX_QUEUE: 'lots' (invalid literal for int() with base 10: "
        "'lots')"),
}


def _command(way: str, args: list[str], config: str, tmp_path: Path) -> list[str]:
    if way == "config file":
        config = 'worker_class = "gunicorn_fdpass.Worker"\n' + config
    cmd = [str(Path(sys.executable).parent / "gunicorn"), "-b", "127.0.0.1:0",
           "--no-control-socket", *WAYS[way]]
    if config:
        (tmp_path / "gunicorn.conf.py").write_text(config)
        cmd += ["-c", str(tmp_path / "gunicorn.conf.py")]
    return [*cmd, *args, "examples.hello:app"]


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FDPASS_")}
    env.pop("GUNICORN_CMD_ARGS", None)
    return {**env, **extra}


def _run_to_exit(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run until it exits by itself (bounded); a server that keeps running fails the test."""
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what we started
        out, _ = proc.communicate()
        pytest.fail("gunicorn kept running instead of refusing:\n" + out.decode(errors="replace"))
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize("way", list(WAYS))
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_refused_before_anything_is_bound(way: str, problem: str, tmp_path: Path) -> None:
    args, config, env, message = PROBLEMS[problem]
    status, output = _run_to_exit(_command(way, args, config, tmp_path), _env(env))
    assert status == 1, output
    assert f"Error: {message}" in output, output
    assert "Listening at" not in output, output
    assert "Starting gunicorn" not in output, output  # nothing of the arbiter's start ran


def test_the_same_command_with_good_settings_starts_and_listens(tmp_path: Path) -> None:
    """The control: the refusals above are about the settings, not about the command."""
    cmd = _command("config file", ["-e", "FDPASS_HEAD_TIMEOUT=5"],
                   'raw_env = ["FDPASS_MAX_QUEUE=10"]\n', tmp_path)
    srv = Launched(cmd, tmp_path / "server.log", env=_env({"FDPASS_BURST": "4"}))
    try:
        srv.wait_for_log(r"Listening at: http://127\.0\.0\.1:\d+")
        srv.wait_for_workers(1)
        assert "Error" not in srv.log_text()
    finally:
        assert srv.stop(), srv.log_text()
