"""Release smoke test: build, check, install in fresh virtual environments, serve one request.

Run by ``.ci/run`` after the test suite, from the repository root, as a module
(``.venv/bin/python -m tests.smoke_package``; as a script, ``tests/http`` would shadow the
standard library's ``http``):

1. ``python -m build`` makes the sdist and the wheel; ``twine check --strict`` passes on both.
2. Each of them installs into a fresh virtual environment, reports from that environment the
   version it was built with (``gunicorn_fdpass.__version__`` == the installed metadata) and
   that the master's C core is there (a platform wheel; the sdist compiles it), and serves the
   bundled hello example (copied out of the source tree, so nothing is imported
   from it) with ``-k gunicorn_fdpass.Worker`` and ``-k egg:gunicorn-fdpass#fdpass``.
3. The documentation's commands that need a fresh virtual environment, which the test suite
   cannot afford (tests/test_docs.py lists them as run here): README's first command on a fresh
   copy of the source tree, the quickstart's install, README's install into your own
   project's environment, and the container recipe (its wheel build, then the Dockerfile's
   ``RUN`` and ``CMD`` in a fresh environment standing in for the image; no Docker needed).

The helpers at the top (fenced blocks of the docs, a server started from a shell command and
stopped by its process group) are shared with tests/test_docs.py. Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELLO_BODY = b"Hello, World!\n"


# -- the documentation's fenced blocks ---------------------------------------------------

@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown file."""

    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str

    def commands(self) -> list[str]:
        """Its shell commands: continuation lines joined, comments and blank lines dropped."""
        out: list[str] = []
        pending = ""
        for raw in self.text.splitlines():
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1].rstrip() + " "
                continue
            # A trailing comment (bash's: after whitespace) is dropped, as bash drops it.
            line = re.sub(r"\s+#(\s.*)?$", "", pending + raw.strip()).strip()
            pending = ""
            if line and not line.startswith("#"):
                out.append(line)
        return out


_FENCE = re.compile(r"^```(\S*)\s*$")


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, in order."""
    blocks: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        blocks.append(Block(path, i + 1, opening.group(1), "\n".join(lines[i + 1:end])))
        i = end + 1
    return blocks


def doc_block(relpath: str, lang: str, contains: str, root: Path = REPO) -> Block:
    """The one ``lang`` block of ``relpath`` whose text contains ``contains``."""
    found = [b for b in fenced_blocks(root / relpath) if b.lang == lang and contains in b.text]
    if len(found) != 1:
        raise SystemExit(f"{relpath}: expected one {lang} block containing {contains!r}, "
                         f"found {len(found)}")
    return found[0]


def with_port(command: str, port: int) -> str:
    """The command with the documentation's port 8000 (any address) moved to 127.0.0.1:port."""
    return re.sub(r"(?:0\.0\.0\.0|127\.0\.0\.1):8000\b", f"127.0.0.1:{port}", command)


# -- servers ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plain_env(path_first: Sequence[Path] = (), **extra: str) -> dict[str, str]:
    """The environment of a fresh shell: no virtual environment active, none of Gunicorn's or
    this worker's settings, ``path_first`` directories first on ``PATH``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "GUNICORN_CMD_ARGS", "PYTHONHOME")
           and not k.upper().startswith("FDPASS_")}
    venv_bins = {str(Path(sys.prefix) / "bin"), str(Path(sys.executable).parent)}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in venv_bins]
    env["PATH"] = os.pathsep.join([*(str(p) for p in path_first), *path])
    env.update(extra)
    return env


def get(port: int, target: str = "/", timeout: float = 10.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Served:
    """A shell command that runs a server, in its own session, output to ``log``."""

    def __init__(self, command: str, port: int, *, cwd: Path, env: Mapping[str, str],
                 log: Path, ready_timeout: float = 30.0) -> None:
        self.command = command
        self.port = port
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=dict(env),
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        while not _accepts(port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"`{command}` did not serve on port {port}:\n"
                                     f"{self.log_text()}")
            time.sleep(0.05)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        """TERM the process group we started (the shell and the gunicorn it runs), then KILL
        what is left of it after ``timeout``."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=wait)
            if not _group_alive(self.proc.pid):
                break
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def serve_and_get(command: str, port: int, *, cwd: Path, env: Mapping[str, str], log: Path,
                  body: bytes = HELLO_BODY, ready_timeout: float = 30.0) -> None:
    """Serve ``command``, expect ``200`` with ``body`` for ``GET /``, stop it."""
    with Served(command, port, cwd=cwd, env=env, log=log, ready_timeout=ready_timeout) as srv:
        status, got = get(port)
        if srv.proc.poll() is not None:  # someone else's server on that port answered
            raise AssertionError(f"`{command}` exited:\n{srv.log_text()}")
        if status != 200 or body not in got:
            raise AssertionError(f"`{command}`: GET / gave {status} {got[:200]!r}\n"
                                 f"{srv.log_text()}")
    print(f"  served: {command}", flush=True)


# -- the release checks --------------------------------------------------------------------

def run(cmd: Sequence[str] | str, *, cwd: Path = REPO, env: Mapping[str, str] | None = None,
        timeout: float = 600) -> str:
    """Run a command (a string runs in bash), fail with its output if it fails."""
    argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    result = subprocess.run(argv, cwd=cwd, env=None if env is None else dict(env),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{cmd} exited with {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
    return result.stdout


def source_version() -> str:
    """``__version__`` as written in the source (the single place it is written)."""
    tree = ast.parse((REPO / "gunicorn_fdpass" / "__init__.py").read_text())
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "__version__"
                and isinstance(node.value, ast.Constant)):
            return str(node.value.value)
    raise AssertionError("no __version__ = '...' in gunicorn_fdpass/__init__.py")


def build(dist: Path) -> tuple[Path, Path]:
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)])
    version = source_version()
    # A platform wheel (cp3XX-cp3XX-linux_...): it holds the master's compiled core.
    wheels = sorted(dist.glob(f"gunicorn_fdpass-{version}-cp*.whl"))
    sdist = dist / f"gunicorn_fdpass-{version}.tar.gz"
    found = sorted(p.name for p in dist.iterdir())
    assert len(wheels) == 1 and found == sorted([wheels[0].name, sdist.name]), f"built {found}"
    wheel = wheels[0]
    run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)])
    print(f"built and checked: {wheel.name}, {sdist.name}", flush=True)
    return wheel, sdist


def fresh_venv(where: Path) -> Path:
    """A new virtual environment; returns its ``bin`` directory."""
    run([sys.executable, "-m", "venv", str(where)])
    return where / "bin"


def check_installed(bin_dir: Path, where: Path) -> None:
    """The package in ``bin_dir``'s environment is the built one, and says its version."""
    out = run([str(bin_dir / "python"), "-c",
               "import json, importlib.metadata as m, gunicorn_fdpass as g; "
               "from gunicorn_fdpass.master import fastpath as f; "
               "from gunicorn_fdpass.asgi import connection; "
               "from gunicorn_fdpass.compiled import compiled_modules as c; "
               "print(json.dumps([g.__version__, m.version('gunicorn-fdpass'), g.__file__, "
               "f.COMPILED, c()]))"],
              cwd=where, env=plain_env())
    reported, metadata, location, compiled, modules = json.loads(out)
    assert reported == metadata == source_version(), (reported, metadata)
    assert compiled, "the master's C core was not built or not installed"
    # The HTTP layer compiled with mypyc (setup.py's MYPYC), a few of its modules.
    assert {"gunicorn_fdpass.http.request_head", "gunicorn_fdpass.asgi.connection"} <= set(
        modules), f"the HTTP layer was not compiled or not installed: {modules}"
    assert Path(location).is_relative_to(bin_dir.parent), f"imported from {location}"


def smoke_artifact(artifact: Path, tmp: Path) -> None:
    """Install ``artifact`` in a fresh environment and serve the example with it."""
    kind = "wheel" if artifact.suffix == ".whl" else "sdist"
    bin_dir = fresh_venv(tmp / f"venv-{kind}")
    run([str(bin_dir / "pip"), "install", "-q", str(artifact)], env=plain_env())
    app = tmp / f"app-{kind}"
    app.mkdir()
    shutil.copy(REPO / "examples" / "hello.py", app / "hello.py")
    check_installed(bin_dir, app)
    for worker in ("gunicorn_fdpass.Worker", "egg:gunicorn-fdpass#fdpass"):
        port = free_port()
        serve_and_get(f"exec {bin_dir}/gunicorn -k {worker} -w 2 -b 127.0.0.1:{port} hello:app",
                      port, cwd=app, env=plain_env(), log=tmp / f"{kind}.log")
    print(f"{kind} installs and serves", flush=True)


# -- the documentation's commands that need fresh environments -----------------------------

STAND_IN_APP = '''"""Stands in for the documentation's myproject.wsgi:application / myapp:app."""

from examples_hello import app

application = app
'''

STAND_IN_ASGI_APP = '''"""Stands in for the documentation's myproject.asgi:app: an ASGI hello."""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Hello, World!"})
'''


def make_project(where: Path) -> Path:
    """A directory holding the docs' placeholder apps, each the hello example."""
    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "examples" / "hello.py", where / "examples_hello.py")
    (where / "myproject").mkdir(exist_ok=True)
    (where / "myproject" / "__init__.py").write_text("")
    (where / "myproject" / "wsgi.py").write_text(STAND_IN_APP)
    (where / "myproject" / "asgi.py").write_text(STAND_IN_ASGI_APP)
    (where / "myapp.py").write_text(STAND_IN_APP)
    return where


def copy_source_tree(dest: Path) -> Path:
    """The repository's files as a fresh clone has them (tracked, plus new ones not ignored)."""
    names = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"])
    for name in filter(None, names.split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def docs_run_here() -> list[tuple[str, str]]:
    """(file, command) of every documentation shell command this script runs (besides these,
    the Dockerfile's ``RUN`` and ``CMD``)."""
    picked = [("README.md", ".[examples]"),
              ("docs/quickstart.md", "python3 -m venv .venv"),
              ("docs/quickstart.md", ".[asgi]"),
              ("README.md", "pip install ./gunicorn-fdpass"),
              ("docs/deployment.md", "python -m build")]
    return [(relpath, command) for relpath, contains in picked
            for command in doc_block(relpath, "sh", contains).commands()]


def smoke_docs(tmp: Path) -> None:
    checkout = copy_source_tree(tmp / "gunicorn-fdpass")
    fresh = plain_env()

    # README's first command, on a fresh clone: venv, editable install, serve.
    [first] = doc_block("README.md", "sh", ".[examples]").commands()
    port = free_port()
    serve_and_get(with_port(first, port), port, cwd=checkout, env=fresh,
                  log=tmp / "readme.log", ready_timeout=600)
    # The quickstart's install: the same steps, one by one (the venv now exists: idempotent).
    for contains in ("python3 -m venv", ".[asgi]"):
        for command in doc_block("docs/quickstart.md", "sh", contains).commands():
            run(command, cwd=checkout, env=fresh)
    print("  ran: the quickstart's install", flush=True)

    # README: install into your own project's active environment, then serve from it.
    own = fresh_venv(tmp / "own-venv")
    active = plain_env([own], VIRTUAL_ENV=str(own.parent))
    project = make_project(tmp / "own-project")
    install, *servers = doc_block("README.md", "sh", "pip install ./gunicorn-fdpass").commands()
    run(install, cwd=tmp, env=active)
    for command in servers:  # no --bind: Gunicorn's default 127.0.0.1:8000, moved by env
        port = free_port()
        serve_and_get(command, port, cwd=project,
                      env={**active, "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}"},
                      log=tmp / "own.log")

    # Containers: build the wheel into the app's directory, then the Dockerfile's RUN and CMD
    # in a fresh environment standing in for the image (WORKDIR = the app's directory).
    app = make_project(tmp / "app")
    (app / "requirements.txt").write_text("")
    for command in doc_block("docs/deployment.md", "sh", "python -m build").commands():
        run(command, cwd=app, env=active)
    image = fresh_venv(tmp / "image-venv")
    in_image = plain_env([image], VIRTUAL_ENV=str(image.parent))
    dockerfile = doc_block("docs/deployment.md", "dockerfile", "FROM ").commands()
    for line in dockerfile:
        if line.startswith("RUN "):
            run(line[len("RUN "):], cwd=app, env=in_image)
    [cmd] = [json.loads(line[len("CMD "):]) for line in dockerfile if line.startswith("CMD ")]
    port = free_port()
    serve_and_get("exec " + " ".join(with_port(arg, port) for arg in cmd), port, cwd=app,
                  env=in_image, log=tmp / "image.log")
    print("docs' install commands run", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-docs", action="store_true",
                        help="only the package checks (build, twine, install, serve)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="fdpass-smoke-"))
    built: list[Path] = []
    steps: list[tuple[str, Callable[[], object]]] = [
        ("build and twine check", lambda: built.extend(build(tmp / "dist"))),
        ("wheel in a fresh venv", lambda: smoke_artifact(built[0], tmp)),
        ("sdist in a fresh venv", lambda: smoke_artifact(built[1], tmp)),
    ]
    if not args.skip_docs:
        steps.append(("docs' install commands", lambda: smoke_docs(tmp)))
    passed = 0
    try:
        for name, step in steps:
            try:
                step()
            except Exception:
                traceback.print_exc()
                print(f"smoke: {name} FAILED")
                # Later steps need the earlier ones: stop at the first failure.
                print(f"smoke: {passed} passed, 1 failed")
                return 1
            passed += 1
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"smoke test took {time.monotonic() - started:.0f}s")
    print(f"smoke: {passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
