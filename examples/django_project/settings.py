"""Settings for the example Django project.

No database: sessions use the signed-cookie backend, and nothing else needs a model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Example only: a real deployment reads its key from the environment / a secret store.
SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "django-insecure-example-only-do-not-use-in-production-0123456789"
)
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "examples.django_project.urls"
WSGI_APPLICATION = "examples.django_project.wsgi.application"
TEMPLATES: list[dict[str, object]] = []
DATABASES: dict[str, dict[str, object]] = {}

SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
SESSION_COOKIE_HTTPONLY = True

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"

# Uploads larger than this go to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# Files served by the ``files/<name>`` view (FileResponse through wsgi.file_wrapper).
FILES_DIR = Path(
    os.environ.get("EXAMPLE_FILES_DIR")
    or Path(tempfile.gettempdir()) / f"fdpass-django-example-{os.getuid()}"
)

# With DEBUG = False Django's default logging sends errors only to ADMINS by mail; log
# them (with the traceback) to stderr instead, which Gunicorn captures.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "django.security": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
