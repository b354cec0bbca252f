"""botocore clients built from :class:`~statekeeper.config.Settings`, and the
one place that turns botocore failures into one-line errors.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bx
import botocore.session
from botocore.config import Config

from statekeeper.errors import AwsError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from statekeeper.config import Settings

# Error codes S3-compatible stores answer for a feature they lack.
UNSUPPORTED_CODES = {"NotImplemented", "501", "UnsupportedOperation",
                     "XNotImplemented"}


def session(settings: Settings) -> botocore.session.Session:
    """A botocore session (boto3's would add 0.1 s of imports to every
    task for nothing we use) with the configured credentials and region."""
    env = settings.environ
    made = botocore.session.Session(profile=env.get("AWS_PROFILE") or None)
    key, secret, token = (env.get(name) or None for name in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"))
    if key or secret or token:
        made.set_credentials(key, secret, token)
    made.set_config_variable("region", settings.region)
    return made


def client(
    settings: Settings, service: str, *, pool: int = 10,
    attempts: int = 5, bulk: bool = False, **extra: Any,
) -> Any:
    """A client for ``service``; S3 uses path-style on custom endpoints.

    ``bulk`` is for many small requests from many threads (backup,
    restore, verify), where botocore's own per-request work is the
    bottleneck: retries back off without the adaptive mode's shared rate
    limiter (a lock every thread queues on), checksums are computed and
    checked only where S3 requires them (the callers hash what they copy
    with SHA-256 themselves), and PUTs go without ``Expect: 100-continue``
    (a round trip per object that only pays off for large bodies).
    """
    options: dict[str, Any] = {
        "retries": {"mode": "adaptive" if attempts > 3 and not bulk
                    else "standard", "max_attempts": attempts},
        "max_pool_connections": pool,
        "connect_timeout": 5,
        "read_timeout": 60,
    }
    if bulk:
        options["request_checksum_calculation"] = "when_required"
        options["response_checksum_validation"] = "when_required"
    if service == "s3" and settings.endpoint_url:
        options["s3"] = {"addressing_style": "path"}
    endpoint = settings.endpoint_url
    if service == "sts" and endpoint is None:
        endpoint = f"https://sts.{settings.region}.amazonaws.com"
    try:
        made = session(settings).create_client(
            service, endpoint_url=endpoint,
            config=Config(**options), **extra,
        )
    except bx.ProfileNotFound as exc:
        raise AwsError(
            f"AWS profile '{exc.kwargs.get('profile')}' does not exist",
            "fix AWS_PROFILE or add the profile to ~/.aws/config",
        ) from None
    if bulk:
        made.meta.events.register_last("before-call.s3.PutObject",
                                       _no_expect_continue)
    return made


def _no_expect_continue(params: dict[str, Any], **_: Any) -> None:
    params["headers"].pop("Expect", None)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, bx.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_unsupported(exc: BaseException) -> bool:
    if not isinstance(exc, bx.ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 501 or error_code(exc) in UNSUPPORTED_CODES


def describe(exc: BaseException, settings: Settings, doing: str) -> AwsError:
    """A one-line :class:`AwsError` for a botocore failure while ``doing``."""
    where = settings.endpoint_url or f"AWS ({settings.region})"
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return AwsError(
            f"no AWS credentials found while {doing}",
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
            "or run 'inv sandbox.up' for the local emulator",
        )
    if isinstance(exc, (bx.EndpointConnectionError,
                        bx.ConnectTimeoutError)):
        return AwsError(
            f"cannot reach {where} while {doing}",
            "start the store (inv sandbox.up for the local emulator) or fix "
            "AWS_ENDPOINT_URL",
        )
    if isinstance(exc, bx.ClientError):
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "") or code
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch",
                    "InvalidClientTokenId", "UnrecognizedClientException",
                    "ExpiredToken", "AuthFailure"}:
            return AwsError(
                f"AWS rejected the credentials while {doing} ({code})",
                "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                "AWS_PROFILE, or renew the session",
            )
        if code in {"AccessDenied", "AccessDeniedException", "403"}:
            return AwsError(
                f"access denied while {doing}",
                "grant the missing permission (inv iam.policy prints the "
                "minimal policy) or use other credentials",
            )
        if code in {"NoSuchBucket", "404"}:
            return AwsError(
                f"bucket '{settings.bucket}' does not exist at {where}",
                "run 'inv bootstrap' to create it, or fix STATE_BUCKET",
            )
        return AwsError(f"{doing} failed: {code}: {message}")
    if isinstance(exc, bx.BotoCoreError):
        return AwsError(f"{doing} failed: {exc}")
    raise exc


@contextmanager
def translated(settings: Settings, doing: str) -> Iterator[None]:
    """Turn any botocore failure inside the block into an AwsError."""
    try:
        yield
    except (bx.BotoCoreError, bx.ClientError) as exc:
        raise describe(exc, settings, doing) from None
