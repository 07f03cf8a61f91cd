"""Views of the example Django project.

``GET  /``                  plain-text hello
``GET  /api/items/``        JSON list of the items created so far (per worker process)
``POST /api/items/``        JSON body ``{"name": ..., ...}`` -> 201 with the item and an id
``POST /form/``             url-encoded form -> its fields as JSON
``POST /upload/``           multipart/form-data with a ``file`` part -> name, size, sha256
``POST /upload-raw/``       any body -> size and sha256 of what Django could read
``GET  /stream/?chunks=N&size=S&pause=F``  ``StreamingHttpResponse`` from a generator
``GET  /files/<name>``      ``FileResponse`` (through ``wsgi.file_wrapper``)
``GET  /old/``              302 to ``/``
``GET  /login/``            an HTML form with a CSRF token
``POST /login/``            ``username`` / ``password`` (``secret``), CSRF-checked: sets the
                            session (signed cookie) and redirects to ``/me/``
``GET  /me/``               the logged-in user, 401 if none
``POST /logout/``           clears the session (CSRF-checked; ``X-CSRFToken`` works)
``GET  /cookies/set/?name=V...``  sets each query parameter as a cookie
``GET  /cookies/``          the request's cookies as JSON
``GET  /boom/``             raises ``RuntimeError`` -> 500 page, logged by ``django.request``
"""

from __future__ import annotations

import hashlib
import html
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    JsonResponse,
    StreamingHttpResponse,
)
from django.middleware.csrf import get_token
from django.shortcuts import redirect
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe

USERS = {"alice": "secret", "bob": "secret"}
_ids = itertools.count(1)
_items: list[dict[str, Any]] = []

FILES_DIR = settings.FILES_DIR
FILES_DIR.mkdir(exist_ok=True)
if not (FILES_DIR / "sample.txt").exists():
    (FILES_DIR / "sample.txt").write_text("Served with FileResponse through wsgi.file_wrapper.\n")


def _digest(read: Any) -> tuple[int, str]:
    """Size and sha256 of what ``read(n)`` yields, read in bounded chunks."""
    h = hashlib.sha256()
    size = 0
    while True:
        block = read(64 * 1024)
        if not block:
            return size, h.hexdigest()
        size += len(block)
        h.update(block)


@require_safe
def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("Hello from Django!\n", content_type="text/plain")


@csrf_exempt
def items(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return JsonResponse({"items": _items})
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "POST"])
    try:
        data = json.loads(request.body)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return JsonResponse({"error": "expected a JSON object with a string 'name'"}, status=400)
    item = {"id": next(_ids), **data}
    _items.append(item)
    return JsonResponse(item, status=201)


@csrf_exempt
@require_POST
def form(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"fields": {k: request.POST.getlist(k) for k in request.POST}})


@csrf_exempt
@require_POST
def upload(request: HttpRequest) -> HttpResponse:
    upload = request.FILES.get("file")
    if upload is None:
        return JsonResponse({"error": "no 'file' part"}, status=400)
    size, sha256 = _digest(upload.read)
    return JsonResponse({"filename": upload.name, "content_type": upload.content_type,
                         "size": size, "sha256": sha256, "fields": request.POST.dict()})


@csrf_exempt
@require_POST
def upload_raw(request: HttpRequest) -> HttpResponse:
    # request.read() is bounded by CONTENT_LENGTH: Django ignores wsgi.input_terminated.
    size, sha256 = _digest(request.read)
    return JsonResponse({"size": size, "sha256": sha256,
                         "content_length": request.META.get("CONTENT_LENGTH")})


@require_safe
def stream(request: HttpRequest) -> HttpResponse:
    chunks = int(request.GET.get("chunks", 10))
    size = int(request.GET.get("size", 64))
    pause = float(request.GET.get("pause", 0))

    def generate() -> Iterator[bytes]:
        for i in range(chunks):
            yield f"chunk {i}\n".encode().ljust(size, b".")
            if i == 0 and pause:
                time.sleep(pause)

    return StreamingHttpResponse(generate(), content_type="application/octet-stream")


@require_safe
def files(request: HttpRequest, name: str) -> HttpResponse:
    path = FILES_DIR / name
    if name.startswith(".") or not path.is_file():
        raise Http404("no such file")
    # Django's WSGIHandler hands FileResponse's file to environ["wsgi.file_wrapper"].
    return FileResponse(open(path, "rb"), content_type="application/octet-stream")


@require_safe
def old(request: HttpRequest) -> HttpResponse:
    return redirect("index")


def login(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        token = html.escape(get_token(request))
        return HttpResponse(
            '<!doctype html><form method="post" action="/login/">'
            f'<input type="hidden" name="csrfmiddlewaretoken" value="{token}">'
            '<input name="username"><input name="password" type="password">'
            '<button>Log in</button></form>'
        )
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "POST"])
    username = request.POST.get("username", "")
    if USERS.get(username) is None or USERS[username] != request.POST.get("password"):
        return JsonResponse({"error": "bad credentials"}, status=401)
    request.session.cycle_key()
    request.session["user"] = username
    return redirect("me")


@require_safe
def me(request: HttpRequest) -> HttpResponse:
    user = request.session.get("user")
    if user is None:
        return JsonResponse({"error": "not logged in"}, status=401)
    return JsonResponse({"user": user})


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return JsonResponse({"ok": True})


@require_safe
def set_cookies(request: HttpRequest) -> HttpResponse:
    resp = JsonResponse({"set": sorted(request.GET)})
    for name, value in request.GET.items():
        resp.set_cookie(name, value, httponly=True, samesite="Lax")
    return resp


@require_safe
def cookies(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"cookies": request.COOKIES})


@require_safe
def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("django example boom")
