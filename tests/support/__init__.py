"""Integration-test support: a real-Gunicorn harness and a raw HTTP client."""

from .http import (
    HTTPProtocolError,
    IncompleteResponse,
    RawHTTPConnection,
    Response,
    build_request,
    chunked_body,
    request,
)
from .server import (
    OUR_WORKER_CLASS,
    GunicornServer,
    ServerError,
    is_our_worker,
    worker_class_under_test,
)

__all__ = [
    "OUR_WORKER_CLASS",
    "GunicornServer",
    "HTTPProtocolError",
    "IncompleteResponse",
    "RawHTTPConnection",
    "Response",
    "ServerError",
    "build_request",
    "chunked_body",
    "is_our_worker",
    "request",
    "worker_class_under_test",
]
