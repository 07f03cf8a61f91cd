"""A small Flask application served by this worker.

    gunicorn --worker-class gunicorn_fdpass.Worker -w 2 examples.flask_app:app

Routes
------
``GET  /``                      plain-text hello
``GET  /api/items``             JSON list of the items created so far (per worker process)
``POST /api/items``             JSON body ``{"name": ..., ...}`` -> 201 with the item and an id
``POST /form``                  url-encoded form -> its fields as JSON
``POST /upload``                multipart/form-data with a ``file`` part -> name, size, sha256
                                (and the other fields)
``POST /upload-raw``            any body (Content-Length or chunked) -> size and sha256
``GET  /stream?chunks=N&size=S&pause=F``  generator response: N chunks of S bytes
                                (``b"chunk <i>\\n"`` padded with ``.``); sleeps F seconds
                                after the first chunk
``GET  /files/<name>``          ``send_file`` from ``EXAMPLE_FILES_DIR`` (by default a temp dir
                                holding ``sample.txt``); served through ``wsgi.file_wrapper``
``GET  /old``                   302 to ``/``
``POST /login``                 form ``username`` / ``password`` (``secret``): sets the
                                session and redirects (303) to ``/me``; 401 otherwise
``GET  /me``                    the logged-in user from the session, 401 if none
``POST /logout``                clears the session
``GET  /cookies/set?name=V...`` sets each query parameter as a cookie
``GET  /cookies``               the request's cookies as JSON
``GET  /boom``                  raises ``RuntimeError`` -> 500 page, logged with the traceback

Unknown paths get Flask's 404 page.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, request, send_file, session, url_for

app = Flask(__name__)
# Example only: a real deployment reads its key from the environment / a secret store.
app.secret_key = os.environ.get("FLASK_SECRET_KEY", "example-only-not-a-secret")

USERS = {"alice": "secret", "bob": "secret"}
_ids = itertools.count(1)
_items: list[dict[str, Any]] = []


def _files_dir() -> Path:
    configured = os.environ.get("EXAMPLE_FILES_DIR")
    if configured:
        return Path(configured)
    path = Path(tempfile.gettempdir()) / f"fdpass-flask-example-{os.getuid()}"
    path.mkdir(exist_ok=True)
    sample = path / "sample.txt"
    if not sample.exists():
        sample.write_text("Served with send_file through wsgi.file_wrapper.\n")
    return path


FILES_DIR = _files_dir()


def _digest(stream: Any) -> tuple[int, str]:
    """Size and sha256 of a readable stream, read in bounded chunks."""
    h = hashlib.sha256()
    size = 0
    while True:
        block = stream.read(64 * 1024)
        if not block:
            return size, h.hexdigest()
        size += len(block)
        h.update(block)


@app.get("/")
def index() -> Response:
    return Response("Hello from Flask!\n", mimetype="text/plain")


@app.get("/api/items")
def list_items() -> Response:
    return jsonify(items=_items)


@app.post("/api/items")
def create_item() -> tuple[Response, int]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return jsonify(error="expected a JSON object with a string 'name'"), 400
    item = {"id": next(_ids), **data}
    _items.append(item)
    return jsonify(item), 201


@app.post("/form")
def form() -> Response:
    return jsonify(fields={k: request.form.getlist(k) for k in request.form})


@app.post("/upload")
def upload() -> tuple[Response, int] | Response:
    upload = request.files.get("file")
    if upload is None:
        return jsonify(error="no 'file' part"), 400
    size, sha256 = _digest(upload.stream)
    return jsonify(filename=upload.filename, content_type=upload.mimetype, size=size,
                   sha256=sha256, fields=request.form.to_dict())


@app.post("/upload-raw")
def upload_raw() -> Response:
    size, sha256 = _digest(request.stream)
    return jsonify(size=size, sha256=sha256)


@app.get("/stream")
def stream() -> Response:
    chunks = request.args.get("chunks", 10, type=int)
    size = request.args.get("size", 64, type=int)
    pause = request.args.get("pause", 0.0, type=float)

    def generate() -> Iterator[bytes]:
        for i in range(chunks):
            yield f"chunk {i}\n".encode().ljust(size, b".")
            if i == 0 and pause:
                time.sleep(pause)

    return Response(generate(), mimetype="application/octet-stream")


@app.get("/files/<name>")
def files(name: str) -> Response:
    path = FILES_DIR / name
    if "/" in name or name.startswith(".") or not path.is_file():
        abort(404)
    # send_file wraps the open file with environ["wsgi.file_wrapper"] when the server has one.
    return send_file(path, mimetype="application/octet-stream")


@app.get("/old")
def old() -> Response:
    return redirect(url_for("index"))


@app.post("/login")
def login() -> tuple[Response, int] | Response:
    username = request.form.get("username", "")
    if USERS.get(username) is None or USERS[username] != request.form.get("password"):
        return jsonify(error="bad credentials"), 401
    session.clear()
    session["user"] = username
    return redirect(url_for("me"), code=303)


@app.get("/me")
def me() -> tuple[Response, int] | Response:
    user = session.get("user")
    if user is None:
        return jsonify(error="not logged in"), 401
    return jsonify(user=user)


@app.post("/logout")
def logout() -> Response:
    session.clear()
    return jsonify(ok=True)


@app.get("/cookies/set")
def set_cookies() -> Response:
    resp = jsonify(set=sorted(request.args))
    for name, value in request.args.items():
        resp.set_cookie(name, value, httponly=True, samesite="Lax")
    return resp


@app.get("/cookies")
def cookies() -> Response:
    return jsonify(cookies=request.cookies.to_dict())


@app.get("/boom")
def boom() -> Response:
    raise RuntimeError("flask example boom")
