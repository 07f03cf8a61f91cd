"""Every shell command in README.md and docs/ is run by a test, so the docs cannot drift.

``COMMANDS`` says, for each command of every fenced shell block (continuation lines joined,
comments dropped), how it is tested. A command in the docs that is not in the table, or an
entry the docs no longer have, fails :func:`test_every_shell_command_is_in_the_table`.

- ``serve``: run as written in a fresh shell (no virtual environment active, unless its block
  activates one or the entry says the reader's environment is active), from a project
  directory holding ``.venv`` (this suite's environment), ``examples`` and stand-ins for the
  docs' ``myproject.wsgi:application`` / ``myapp:app``; port 8000 becomes a free port (by
  ``GUNICORN_CMD_ARGS`` when the command relies on Gunicorn's default bind). ``GET /`` must
  answer 200 with the app's greeting; the server is stopped by its process group.
- ``client``: run against the server the command before it in its block started.
- ``activate``: the block's following commands run after it, in the same shell.
- ``bench``: the comparison tool runs for minutes (tests/bench runs it, shortened): its
  arguments are parsed by its own parser and its app resolved, from the directory it names.
- ``smoke``: needs a fresh virtual environment and the package index, too slow here:
  tests/smoke_package.py (run by .ci/run) runs it; checked against that script's own list.
- ``ci``: the suite itself; .ci/run runs it verbatim.
- ``systemd``: needs systemd as PID 1, root, and changes the machine: not run. The unit files
  are parsed, and their ``ExecStart`` is served under emulated socket activation (the
  ``curl`` of that block is run against it).

Config blocks (nginx, systemd units, Dockerfile) are parsed and checked against the commands
they go with; ``nginx -t`` runs when nginx is installed.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gunicorn_fdpass.bench.choose import ASGI_BENCH_APP, DEFAULT_APP, resolve_app
from gunicorn_fdpass.bench.cli import build_parser
from tests.smoke_package import (
    HELLO_BODY,
    Block,
    Served,
    doc_block,
    docs_run_here,
    fenced_blocks,
    free_port,
    get,
    make_project,
    plain_env,
    with_port,
)
from tests.support.deploy import Launched

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"sh", "bash", "shell", "console"}
CONFIG_BLOCKS = [("docs/deployment.md", "nginx"), ("docs/deployment.md", "ini"),
                 ("docs/deployment.md", "ini"), ("docs/deployment.md", "dockerfile")]
OTHER_LANGS = {"", "python"}  # diagrams and code excerpts: no commands

README_TEST_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && "
                       ".venv/bin/python -m pytest")
QS, DEPLOY, BENCH_MD = "docs/quickstart.md", "docs/deployment.md", "docs/benchmarks.md"

# (file, command) -> (how, whether the reader's environment is active for it)
COMMANDS: dict[tuple[str, str], tuple[str, bool]] = {
    ("README.md", "python3 -m venv .venv && .venv/bin/pip install -e '.[examples]' && "
                  ".venv/bin/gunicorn --worker-class gunicorn_fdpass.Worker -w 4 "
                  "-b 127.0.0.1:8000 examples.hello:app"): ("smoke", False),
    ("README.md", README_TEST_COMMAND): ("ci", False),
    ("README.md", "pip install ./gunicorn-fdpass"): ("smoke", True),
    ("README.md", "gunicorn --worker-class gunicorn_fdpass.Worker -w 4 myapp:app"):
        ("smoke", True),
    ("README.md", "gunicorn -k egg:gunicorn-fdpass#fdpass -w 4 myapp:app"): ("smoke", True),
    (QS, "python3 -m venv .venv"): ("smoke", False),
    (QS, ".venv/bin/pip install -e '.[examples]'"): ("smoke", False),
    (QS, ".venv/bin/gunicorn --worker-class gunicorn_fdpass.Worker -w 4 -b 127.0.0.1:8000 "
         "examples.hello:app"): ("serve", False),
    (QS, "curl -i http://127.0.0.1:8000/"): ("client", False),
    (QS, ".venv/bin/gunicorn -k egg:gunicorn-fdpass#fdpass -w 4 -b 127.0.0.1:8000 "
         "examples.hello:app"): ("serve", False),
    (QS, ". .venv/bin/activate"): ("activate", False),
    (QS, "gunicorn -k gunicorn_fdpass.Worker examples.hello:app"): ("serve", False),
    (QS, "gunicorn -k gunicorn_fdpass.Worker examples.flask_app:app"): ("serve", False),
    (QS, "gunicorn -k gunicorn_fdpass.Worker examples.django_project.wsgi:application"):
        ("serve", False),
    (QS, ".venv/bin/pip install -e '.[asgi]' starlette"): ("smoke", False),
    (QS, ".venv/bin/gunicorn -k gunicorn_fdpass.ASGIWorker -w 4 -b 127.0.0.1:8000 "
         "examples.starlette_app:app"): ("serve", False),
    (QS, ".venv/bin/gunicorn -k egg:gunicorn-fdpass#asgi -w 4 -b 127.0.0.1:8000 "
         "examples.django_project.asgi:application"): ("serve", False),
    (QS, ".venv/bin/python -m gunicorn_fdpass.bench myproject.wsgi:application"):
        ("bench", False),
    (BENCH_MD, "python -m gunicorn_fdpass.bench"): ("bench", True),
    (BENCH_MD, "python -m gunicorn_fdpass.bench myproject.wsgi:application --path /health"):
        ("bench", True),
    (BENCH_MD, "python -m gunicorn_fdpass.bench flask"): ("bench", True),
    (BENCH_MD, "python -m gunicorn_fdpass.bench --asgi"): ("bench", True),
    (BENCH_MD, "python -m gunicorn_fdpass.bench --pin-master -s close,keepalive,handoff"):
        ("bench", True),
    (BENCH_MD, "python -m gunicorn_fdpass.bench myproject.asgi:app --path /health"):
        ("bench", True),
    (BENCH_MD, "python -m gunicorn_fdpass.bench django"): ("bench", True),
    (BENCH_MD, "python -m gunicorn_fdpass.bench -k gunicorn_fdpass.Worker@4 --json out.json "
               "--plots out/"): ("bench", True),
    (BENCH_MD, "python -m gunicorn_fdpass.bench -k gunicorn_fdpass.Worker@4 --json "
               "docs/bench/results.json --markdown docs/bench/table.md --plots docs/bench"):
        ("bench", True),
    (DEPLOY, "gunicorn -k gunicorn_fdpass.Worker -w 4 -b 127.0.0.1:8000 --keep-alive 75 "
             "--forwarded-allow-ips 127.0.0.1 myproject.wsgi:application"): ("serve", True),
    (DEPLOY, "systemctl daemon-reload"): ("systemd", False),
    (DEPLOY, "systemctl enable --now gunicorn.socket"): ("systemd", False),
    (DEPLOY, "curl http://127.0.0.1:8000/"): ("systemd", False),
    (DEPLOY, "python -m pip install build"): ("smoke", True),
    (DEPLOY, "python -m build --wheel --outdir wheels ../gunicorn-fdpass"): ("smoke", True),
}

#: What GET / answers with each example (its start: the Starlette one ends with its pid).
BODIES = {"examples.flask_app:app": b"Hello from Flask!\n",
          "examples.django_project.wsgi:application": b"Hello from Django!\n",
          "examples.django_project.asgi:application": b"Hello from Django!\n",
          "examples.starlette_app:app": b'{"hello":"world","pid":'}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _shell_blocks() -> list[Block]:
    return [b for path in DOCS for b in fenced_blocks(path) if b.lang in SHELL_LANGS]


def _served_blocks() -> list[Block]:
    return [b for b in _shell_blocks()
            if any(COMMANDS.get((_rel(b.path), c), ("", False))[0] == "serve"
                   for c in b.commands())]


# -- the table covers the docs, and the docs the table -----------------------------------

def test_every_shell_command_is_in_the_table() -> None:
    in_docs = {(_rel(b.path), c) for b in _shell_blocks() for c in b.commands()}
    missing = sorted(in_docs - COMMANDS.keys())
    stale = sorted(COMMANDS.keys() - in_docs)
    assert not missing, f"shell commands in the docs that no test runs: {missing}"
    assert not stale, f"COMMANDS entries the docs no longer have: {stale}"


def test_every_other_block_is_a_checked_config_or_has_no_commands() -> None:
    configs = [(_rel(b.path), b.lang) for path in DOCS for b in fenced_blocks(path)
               if b.lang not in SHELL_LANGS | OTHER_LANGS]
    assert configs == CONFIG_BLOCKS  # each has its test below


def test_the_smoke_script_runs_exactly_the_commands_left_to_it() -> None:
    left = {key for key, (how, _) in COMMANDS.items() if how == "smoke"}
    assert set(docs_run_here()) == left


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    assert README_TEST_COMMAND in (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert any(line.startswith(README_TEST_COMMAND) for line in ci), ci
    # ... and the release smoke test after it.
    assert ci.index(next(x for x in ci if x.startswith(README_TEST_COMMAND))) < ci.index(
        ".venv/bin/python -m tests.smoke_package")


# -- running the commands -------------------------------------------------------------------

@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory the docs' commands run in: what a reader has, with this suite's venv."""
    where = make_project(tmp_path_factory.mktemp("project"))
    activate = Path(sys.prefix) / "bin" / "activate"
    assert activate.exists(), "run the suite from a virtual environment, as README says"
    (where / ".venv").symlink_to(sys.prefix)
    (where / "examples").symlink_to(ROOT / "examples")
    return where


def _env(active: bool, port: int, command: str) -> dict[str, str]:
    env = plain_env([Path(sys.prefix) / "bin"] if active else [])
    if active:
        env["VIRTUAL_ENV"] = sys.prefix
    if ":8000" not in command:  # Gunicorn's default bind, 127.0.0.1:8000: moved by env
        env["GUNICORN_CMD_ARGS"] = f"--bind 127.0.0.1:{port}"
    return env


def _expected_body(command: str) -> bytes:
    return next((body for app, body in BODIES.items() if command.endswith(app)), HELLO_BODY)


@pytest.mark.parametrize("block", _served_blocks(), ids=lambda b: f"{_rel(b.path)}:{b.line}")
def test_block_runs_as_written(block: Block, project: Path, tmp_path: Path) -> None:
    relpath = _rel(block.path)
    prefix = ""  # what the block ran before, in the same shell (an activation)
    server: Served | None = None
    port = 0
    try:
        for command in block.commands():
            how, active = COMMANDS[(relpath, command)]
            if how == "activate":
                prefix += command + " && "
            elif how == "serve":
                if server is not None:
                    server.stop()  # the block's alternatives, one at a time
                port = free_port()
                server = Served(prefix + "exec " + with_port(command, port), port, cwd=project,
                                env=_env(active, port, command), log=tmp_path / "server.log")
                status, body = get(port)
                expected = _expected_body(command)
                assert status == 200, server.log_text()
                whole = not expected.endswith(b":")  # else only its start is fixed
                assert (body == expected if whole else body.startswith(expected)), (
                    body, server.log_text())
            elif how == "client":
                assert server is not None, f"{command}: no server before it in its block"
                out = subprocess.run(["bash", "-c", with_port(command, port)], cwd=project,
                                     env=_env(active, port, command), capture_output=True,
                                     text=True, timeout=30)
                assert out.returncode == 0, out.stderr
                assert out.stdout.startswith("HTTP/1.1 200 OK"), out.stdout
                # (read as text: its \r\n are \n)
                assert out.stdout.endswith("\n\n" + HELLO_BODY.decode()), out.stdout
            else:
                pytest.fail(f"{command}: {how} in a served block")
    finally:
        if server is not None:
            server.stop()


def test_a_bare_gunicorn_without_activation_is_not_found(project: Path, tmp_path: Path) -> None:
    """What the quickstart used to do; the control that the shells above are fresh ones."""
    out = subprocess.run(["bash", "-c", "gunicorn --version"], cwd=project,
                         env=_env(False, 0, ""), capture_output=True, text=True, timeout=30)
    assert out.returncode == 127, out


@pytest.mark.parametrize("command", [c for (_, c), (how, _) in COMMANDS.items() if how == "bench"])
def test_comparison_tool_commands_parse(command: str, project: Path) -> None:
    argv = shlex.split(command)
    assert argv[1:3] == ["-m", "gunicorn_fdpass.bench"], argv
    args = build_parser().parse_args(argv[3:])
    app = args.app or (ASGI_BENCH_APP if args.asgi else DEFAULT_APP)
    # The bundled apps need the repository; everything else comes from the reader's project.
    bundled = app in ("flask", "django") or app.startswith(("examples", "gunicorn_fdpass"))
    spec, cwd = resolve_app(app, args.chdir or str(ROOT if bundled else project))
    module = spec.split(":")[0]
    found = subprocess.run([sys.executable, "-c", f"import importlib.util as u, sys; "
                            f"sys.exit(u.find_spec({module!r}) is None)"],
                           cwd=cwd, env=plain_env(), timeout=30)
    assert found.returncode == 0, f"{spec} cannot be imported from {cwd}"


# -- config blocks --------------------------------------------------------------------------

def _nginx_and_its_gunicorn() -> tuple[str, str]:
    nginx = doc_block(DEPLOY, "nginx", "upstream app").text
    [command] = doc_block(DEPLOY, "sh", "--forwarded-allow-ips").commands()
    return nginx, command


def test_nginx_upstream_matches_its_gunicorn_command() -> None:
    nginx, command = _nginx_and_its_gunicorn()
    assert nginx.count("{") == nginx.count("}")
    upstream = re.search(r"upstream app \{\s*server (\S+);", nginx)
    assert upstream is not None
    assert f"-b {upstream.group(1)} " in command  # proxy_pass reaches that gunicorn
    nginx_idle = re.search(r"keepalive_timeout (\d+)s;", nginx)
    gunicorn_idle = re.search(r"--keep-alive (\d+)", command)
    assert nginx_idle is not None and gunicorn_idle is not None
    # As the page says: nginx, not Gunicorn, closes an idle upstream connection.
    assert int(nginx_idle.group(1)) < int(gunicorn_idle.group(1))


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_config_passes_nginx_t(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    cert = trustme.CA().issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    nginx, _ = _nginx_and_its_gunicorn()
    nginx = nginx.replace("# ssl_certificate ...; ssl_certificate_key ...;",
                          f"ssl_certificate {tmp_path}/cert.pem; "
                          f"ssl_certificate_key {tmp_path}/key.pem;")
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
                    f"http {{\naccess_log off;\n{nginx}\n}}\n")
    out = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-c", str(conf)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def _units() -> tuple[configparser.ConfigParser, configparser.ConfigParser]:
    parsed = []
    for name in ("gunicorn.socket", "gunicorn.service"):
        block = doc_block(DEPLOY, "ini", f"[{'Socket' if name.endswith('socket') else 'Service'}]")
        unit = configparser.ConfigParser(interpolation=None, strict=True)
        unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
        unit.read_string("\n".join(block.commands()))  # continuation lines joined, as systemd
        parsed.append(unit)
    return parsed[0], parsed[1]


@pytest.fixture
def socket_activated(project: Path, tmp_path: Path) -> Iterator[tuple[int, Launched]]:
    """The service's ExecStart, started as systemd would start it for the socket unit."""
    sock_unit, service = _units()
    assert sock_unit["Socket"]["ListenStream"] == "127.0.0.1:8000"
    assert service["Unit"]["Requires"] == "gunicorn.socket"
    graceful = re.search(r"--graceful-timeout (\d+)", service["Service"]["ExecStart"])
    # As the page says: systemd waits longer than the master drains.
    assert graceful is not None
    assert int(service["Service"]["TimeoutStopSec"]) > int(graceful.group(1))
    argv = shlex.split(service["Service"]["ExecStart"])
    assert argv[0] == "/srv/app/.venv/bin/gunicorn"
    argv[0] = str(Path(sys.prefix) / "bin" / "gunicorn")  # this suite's, for /srv/app's
    name, _, value = service["Service"]["Environment"].partition("=")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    fd = listener.fileno()

    def at_fd3() -> None:  # in the child, before exec: where systemd puts the first socket
        os.dup2(fd, 3)
        os.set_inheritable(3, True)

    srv = Launched(["sh", "-c", 'export LISTEN_PID=$$; exec "$@"', "sh", *argv],
                   tmp_path / "unit.log", cwd=project,
                   env={**plain_env(), "LISTEN_FDS": "1", name: value},
                   preexec_fn=at_fd3, close_fds=False)
    listener.close()
    try:
        srv.wait_for_log(r"Listening at: http://127\.0\.0\.1:\d+")
        yield port, srv
    finally:
        assert srv.stop(), srv.log_text()


def test_systemd_units_serve_through_the_socket(socket_activated: tuple[int, Launched]) -> None:
    port, srv = socket_activated
    [curl] = [c for c in doc_block(DEPLOY, "sh", "systemctl").commands() if c.startswith("curl")]
    out = subprocess.run(["bash", "-c", with_port(curl, port)], capture_output=True, text=True,
                         timeout=30)
    assert (out.returncode, out.stdout) == (0, HELLO_BODY.decode()), srv.log_text()
    assert f"Listening at: http://127.0.0.1:{port}" in srv.log_text()


def test_dockerfile_is_well_formed_and_installs_nothing_from_the_index() -> None:
    lines = doc_block(DEPLOY, "dockerfile", "FROM ").commands()
    keywords = [line.split()[0] for line in lines]
    assert keywords == ["FROM", "WORKDIR", "COPY", "RUN", "CMD"], keywords
    [cmd] = [json.loads(line[4:]) for line in lines if line.startswith("CMD ")]
    assert cmd[0] == "gunicorn" and all(isinstance(a, str) for a in cmd)  # exec form
    [run] = [line[4:] for line in lines if line.startswith("RUN ")]
    # What it installs is the wheel built above (tests/smoke_package.py runs RUN and CMD).
    assert "wheels/gunicorn_fdpass-" in run and " gunicorn-fdpass" not in run


# -- release metadata -----------------------------------------------------------------------

def test_the_version_is_written_once_and_the_changelog_names_it() -> None:
    import gunicorn_fdpass

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "gunicorn_fdpass.__version__" }' in pyproject
    assert re.search(r"^version\s*=\s*\"", pyproject, re.MULTILINE) is None  # no second copy
    newest = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert newest is not None and newest.group(1) == gunicorn_fdpass.__version__


def test_pyproject_has_project_urls() -> None:
    urls = re.search(r"^\[project\.urls\]\n((?:\w+ = \"https://[^\"]+\"\n)+)",
                     (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert urls is not None
    assert {"Homepage", "Changelog"} <= {line.split(" = ")[0] for line in
                                         urls.group(1).splitlines()}
