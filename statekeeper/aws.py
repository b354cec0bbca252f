"""boto3 clients built from :class:`~statekeeper.config.Settings`, and the
one place that turns botocore failures into one-line errors.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import boto3
import botocore.exceptions as bx
from botocore.config import Config

from statekeeper.errors import AwsError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from statekeeper.config import Settings

# Error codes S3-compatible stores answer for a feature they lack.
UNSUPPORTED_CODES = {"NotImplemented", "501", "UnsupportedOperation",
                     "XNotImplemented"}


def session(settings: Settings) -> boto3.Session:
    env = settings.environ
    return boto3.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
        profile_name=env.get("AWS_PROFILE") or None,
        region_name=settings.region,
    )


def client(
    settings: Settings, service: str, *, pool: int = 10,
    attempts: int = 5, **extra: Any,
) -> Any:
    """A client for ``service``; S3 uses path-style on custom endpoints."""
    options: dict[str, Any] = {
        "retries": {"mode": "adaptive" if attempts > 3 else "standard",
                    "max_attempts": attempts},
        "max_pool_connections": pool,
        "connect_timeout": 5,
        "read_timeout": 60,
    }
    if service == "s3" and settings.endpoint_url:
        options["s3"] = {"addressing_style": "path"}
    endpoint = settings.endpoint_url
    if service == "sts" and endpoint is None:
        endpoint = f"https://sts.{settings.region}.amazonaws.com"
    try:
        return session(settings).client(
            service, endpoint_url=endpoint,
            config=Config(**options), **extra,
        )
    except bx.ProfileNotFound as exc:
        raise AwsError(
            f"AWS profile '{exc.kwargs.get('profile')}' does not exist",
            "fix AWS_PROFILE or add the profile to ~/.aws/config",
        ) from None


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
