"""A fault-injecting HTTP proxy in front of the moto server, for tests of
retries (503 SlowDown), of stores that lack a feature (501) and of stores
that answer less than AWS does (``rewrite``)."""

from __future__ import annotations

import http.client
import http.server
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit


class FaultProxy:
    """An HTTP proxy to moto that answers an S3 error to the first
    ``failures`` requests that ``match`` (by method and path; default all):
    503 SlowDown unless told otherwise.  A real endpoint, not an
    in-process mock."""

    def __init__(self, upstream: str, failures: int, *, status: int = 503,
                 code: str = "SlowDown",
                 match: Callable[[str, str], bool] | None = None,
                 rewrite: Callable[[Any, bytes], bytes] | None = None,
                 ) -> None:
        """``rewrite(request_headers, body)`` edits each passed answer."""
        self.upstream = urlsplit(upstream)
        self.failures = failures
        self.status = status
        self.code = code
        self.match = match or (lambda method, path: True)
        self.rewrite = rewrite or (lambda headers, body: body)
        self.refused = 0
        self.passed = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    refuse = (proxy.refused < proxy.failures
                              and proxy.match(self.command, self.path))
                    if refuse:
                        proxy.refused += 1
                    else:
                        proxy.passed += 1
                if refuse:
                    message = (
                        "<?xml version='1.0' encoding='UTF-8'?><Error>"
                        f"<Code>{proxy.code}</Code><Message>refused by "
                        "the test proxy</Message></Error>").encode()
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(message)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(message)
                    self.close_connection = True
                    return
                upstream = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port,
                    timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in {"connection", "expect"}}
                upstream.request(self.command, self.path, body=body,
                                 headers=headers)
                answer = upstream.getresponse()
                payload = proxy.rewrite(self.headers, answer.read())
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in {"connection", "content-length",
                                           "transfer-encoding"}:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)
                self.close_connection = True
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
