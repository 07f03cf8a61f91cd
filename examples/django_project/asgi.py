"""ASGI entry point: ``gunicorn -k gunicorn_fdpass.ASGIWorker examples.django_project.asgi``.

The same project as ``wsgi.py``; Django runs its synchronous views in a thread pool."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_project.settings")

application = get_asgi_application()
