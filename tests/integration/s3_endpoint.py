"""moto's S3, STS and Secrets Manager on loopback, with S3's bucket-owner condition enforced.

moto 5.2.5 accepts ``x-amz-expected-bucket-owner`` and ignores it: it serves an object to any
account that names any owner. Real S3 refuses such a request ("bucket owner condition", S3 User
Guide, *Verifying bucket ownership*): a header that is not a 12-digit account id is a 400
``InvalidBucketOwnerAWSAccountID``, and one naming an account that does not own the bucket is a
403 ``AccessDenied``. This module adds exactly that rule in front of moto's own WSGI application,
judging ownership by moto's own record of which account created each bucket, so that a daemon that
drops the header, or sends the wrong account, fails the tests as it would fail against S3.

Nothing else of moto changes: every request, allowed or not, is answered by moto or by this rule
over real HTTP. boto3 addresses an IP endpoint path-style (``/bucket/key``), which is the only
form read here.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.models import s3_backends
from werkzeug.serving import BaseWSGIServer, make_server

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_ACCOUNT_ID = re.compile(r"\d{12}")


def _s3_error(status: str, code: str, message: str, head: bool) -> tuple[str, bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()
    # HEAD answers carry no body, as S3's do; botocore then reads the status code alone.
    return status, b"" if head else body


class BucketOwnerCondition:
    """WSGI middleware: S3's ExpectedBucketOwner check, answered before moto sees the request."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self.refused = 0

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        expected = environ.get("HTTP_X_AMZ_EXPECTED_BUCKET_OWNER")
        if expected is None:
            return self._app(environ, start_response)
        head = environ.get("REQUEST_METHOD") == "HEAD"
        bucket = str(environ.get("PATH_INFO", "")).lstrip("/").split("/", 1)[0]
        owner = s3_backends.bucket_accounts.get(bucket)
        if not _ACCOUNT_ID.fullmatch(expected):
            status, body = _s3_error(
                "400 Bad Request", "InvalidBucketOwnerAWSAccountID",
                "The value of the expected bucket owner parameter must be an AWS Account ID...",
                head,
            )
        elif owner is not None and owner[1] != expected:
            status, body = _s3_error("403 Forbidden", "AccessDenied", "Access Denied", head)
        else:
            return self._app(environ, start_response)
        self.refused += 1
        start_response(
            status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
        )
        return [body]


class S3Endpoint:
    """moto's server with :class:`BucketOwnerCondition`, on ``127.0.0.1:port`` in a thread."""

    def __init__(self, port: int) -> None:
        self.condition = BucketOwnerCondition(DomainDispatcherApplication(create_backend_app))
        self._server: BaseWSGIServer = make_server(
            "127.0.0.1", port, self.condition, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()
