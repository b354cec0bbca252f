"""Listings, whole-object GET and PUT, and server-side copies for bulk
work, without botocore's per-request machinery.

botocore spends about a millisecond of CPU on every request (its event
hooks, parameter validation, serialisation and response parsing), all of
it under the GIL.  When a backup has to read and write each object itself
(stores that do not hash server-side copies, such as SeaweedFS), that CPU
is what limits the run; where the store copies, it is CPU taken from a
store on the same host.  :class:`DirectS3` signs with botocore's own SigV4
signer and the session's credentials and sends with urllib3: about half
the CPU per request.

It serves only custom endpoints with path-style addressing (the
S3-compatible stores) reached without an HTTP proxy; :func:`for_client`
answers None otherwise and callers keep using botocore, as on AWS itself.
"""

from __future__ import annotations

import base64
import random
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit
from xml.etree import ElementTree

import botocore.exceptions as bx
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.httpsession import get_cert_path

from statekeeper.config import Settings

# Answers worth another try, as botocore's standard retry mode has them.
RETRY_STATUS = {500, 502, 503, 504, 429}
RETRY_CODES = {"SlowDown", "Throttling", "ThrottlingException",
               "RequestTimeout", "InternalError", "ServiceUnavailable",
               "RequestTimeTooSkewed"}


@dataclass(frozen=True)
class Fetched:
    body: bytes
    etag: str
    version_id: str | None


@dataclass(frozen=True)
class CopyResult:
    """A server-side copy: the new ETag, the SHA-256 the store computed
    (base64, or None when it gave none) and the source's version id."""

    etag: str
    sha256: str | None
    source_version_id: str | None


@dataclass(frozen=True)
class Listed:
    """One object of a listing: ETag unquoted, time in ISO 8601."""

    key: str
    size: int
    etag: str
    modified: str


def listing(client: Any, direct: DirectS3 | None, bucket: str,
            prefix: str) -> Iterator[Listed]:
    """Every object under ``prefix`` in key order, streamed a page at a
    time, through ``direct`` when there is one."""
    if direct is not None:
        yield from direct.list(bucket, prefix)
        return
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            yield Listed(item["Key"], int(item["Size"]),
                         item["ETag"].strip('"'),
                         item["LastModified"].isoformat())


class DirectS3:
    """Listings, and GET and PUT of whole objects, on one path-style
    endpoint, retried as botocore's standard mode would."""

    def __init__(self, endpoint: str, region: str, credentials: Any,
                 *, pool: int, attempts: int, ca_bundle: str | None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.signer = S3SigV4Auth(credentials, "s3", region)
        self.attempts = attempts
        options: dict[str, Any] = {}
        if self.endpoint.startswith("https://"):
            options = {"cert_reqs": "CERT_REQUIRED",
                       "ca_certs": ca_bundle or get_cert_path(True)}
        self.http = urllib3.PoolManager(
            maxsize=pool, block=False, retries=False,
            timeout=urllib3.Timeout(connect=5, read=60), **options)

    def get(self, bucket: str, key: str) -> Fetched:
        response = self._send("GET", bucket, key, None, {}, "GetObject")
        return Fetched(response.data, response.headers.get("ETag", ""),
                       response.headers.get("x-amz-version-id"))

    def put(self, bucket: str, key: str, body: bytes, sha256: bytes) -> None:
        """Write ``body``; the store checks it against ``sha256``."""
        self._send("PUT", bucket, key, body, {
            "x-amz-checksum-sha256": base64.b64encode(sha256).decode()},
            "PutObject")

    def copy(self, bucket: str, key: str, source_bucket: str,
             source_key: str) -> CopyResult:
        """CopyObject asking the store for the copy's SHA-256."""
        source = quote(f"{source_bucket}/{source_key}", safe="/~")
        response = self._send("PUT", bucket, key, None, {
            "x-amz-copy-source": source,
            "x-amz-checksum-algorithm": "SHA256"}, "CopyObject")
        root = _xml(response.data, "CopyObject")
        space = _namespace(root)
        return CopyResult(
            (root.findtext(f"{space}ETag") or "").strip('"'),
            root.findtext(f"{space}ChecksumSHA256"),
            response.headers.get("x-amz-copy-source-version-id"))

    def list(self, bucket: str, prefix: str) -> Iterator[Listed]:
        """ListObjectsV2, parsed with ElementTree: botocore's generic
        parser costs about 65 microseconds of CPU per key."""
        query = {"list-type": "2", "prefix": prefix, "encoding-type": "url"}
        while True:
            response = self._send("GET", bucket, "", None, {},
                                  "ListObjectsV2", query=query)
            root = _xml(response.data, "ListObjectsV2")
            space = _namespace(root)
            for item in root.iter(f"{space}Contents"):
                modified = datetime.fromisoformat(
                    item.findtext(f"{space}LastModified") or "")
                yield Listed(
                    unquote_plus(item.findtext(f"{space}Key") or ""),
                    int(item.findtext(f"{space}Size") or 0),
                    (item.findtext(f"{space}ETag") or "").strip('"'),
                    modified.isoformat())
            token = root.findtext(f"{space}NextContinuationToken")
            if root.findtext(f"{space}IsTruncated") != "true" or not token:
                return
            query = {**query, "continuation-token": token}

    def _send(self, method: str, bucket: str, key: str, body: bytes | None,
              headers: dict[str, str], operation: str,
              query: dict[str, str] | None = None) -> Any:
        url = f"{self.endpoint}/{bucket}/{quote(key, safe='/~')}"
        if query:  # encoded as SigV4 canonicalises it, '/' included
            url += "?" + "&".join(f"{quote(k, safe='~')}={quote(v, safe='~')}"
                                  for k, v in sorted(query.items()))
        for attempt in range(1, self.attempts + 1):
            request = AWSRequest(method=method, url=url, data=body,
                                 headers=dict(headers))
            self.signer.add_auth(request)
            try:
                response = self.http.request(
                    method, url, body=body,
                    headers=dict(request.headers.items()),
                    preload_content=True)
            except urllib3.exceptions.HTTPError as exc:
                if attempt == self.attempts:  # reported as botocore would
                    raise bx.EndpointConnectionError(
                        endpoint_url=self.endpoint, error=exc) from None
                _pause(attempt)
                continue
            # S3 may fail a copy after answering 200: the error is the body.
            if response.status in (200, 204) and not (
                    operation == "CopyObject"
                    and b"<Error>" in response.data[:256]):
                return response
            code, message = _error(response)
            if ((response.status in RETRY_STATUS or code in RETRY_CODES)
                    and attempt < self.attempts):
                _pause(attempt)
                continue
            raise bx.ClientError(
                {"Error": {"Code": code, "Message": message},
                 "ResponseMetadata": {"HTTPStatusCode": response.status}},
                operation)
        raise AssertionError("unreachable: the last attempt returns")


def _xml(data: bytes, operation: str) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError:
        raise bx.ClientError(
            {"Error": {"Code": "MalformedXML", "Message":
                       f"the store's {operation} answer is not valid XML"}},
            operation) from None


def _namespace(root: ElementTree.Element) -> str:
    """``{uri}`` of the root's namespace, to prefix child tags with."""
    return root.tag[:root.tag.index("}") + 1] \
        if root.tag.startswith("{") else ""


def _pause(attempt: int) -> None:
    """Full-jitter exponential backoff, as botocore's standard mode."""
    time.sleep(random.uniform(0, min(20.0, 0.1 * 2 ** attempt)))


def _error(response: Any) -> tuple[str, str]:
    """The S3 error code and message of a failed answer."""
    try:
        root = ElementTree.fromstring(response.data or b"<Error/>")
    except ElementTree.ParseError:
        root = ElementTree.Element("Error")
    code = root.findtext("Code") or str(response.status)
    if response.status == 404 and not response.data:
        code = "NoSuchKey"  # a HEAD-like empty 404
    return code, root.findtext("Message") or ""


def for_client(settings: Settings, client: Any, *, pool: int,
               attempts: int) -> DirectS3 | None:
    """A :class:`DirectS3` beside ``client``, or None where it does not
    serve: AWS's own endpoints, or an endpoint behind an HTTP proxy."""
    endpoint = settings.endpoint_url and client.meta.endpoint_url
    if not endpoint:
        return None
    host = urlsplit(endpoint).hostname or ""
    proxies = urllib.request.getproxies()
    if any(proxies.get(s) for s in ("http", "https")) and \
            not urllib.request.proxy_bypass(host):
        return None
    from statekeeper import aws

    credentials = aws.session(settings).get_credentials()
    if credentials is None:
        raise bx.NoCredentialsError()
    return DirectS3(endpoint, client.meta.region_name, credentials,
                    pool=pool, attempts=attempts,
                    ca_bundle=settings.environ.get("AWS_CA_BUNDLE"))
