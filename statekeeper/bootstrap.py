"""``inv bootstrap``: the state bucket, the CLI login and the stacks.

Idempotent.  Every step reports ``created``, ``ok`` (already compliant),
``repaired``, ``unsupported`` (the store lacks the feature) or ``skipped``;
with ``dry_run`` the same steps report ``would create``/``would repair`` and
nothing is written.  Local checks (settings, the Pulumi CLI, a secrets
provider, the project directory) all run before the first AWS call, so a
mistake there changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import botocore.exceptions as bx

from statekeeper import aws, bucket, stacks
from statekeeper.errors import AwsError
from statekeeper.output import Report
from statekeeper.project import project_file
from statekeeper.pulumi_cli import Pulumi

if TYPE_CHECKING:
    from statekeeper.config import Settings


def run(settings: Settings, *, dry_run: bool = False,
        report: Report | None = None) -> int:
    report = report or Report()
    pulumi = Pulumi(settings, cwd=settings.project_dir)
    project_file(settings.project_dir)
    pulumi.check_version()
    pulumi.require_secrets_provider()

    s3 = aws.client(settings, "s3", attempts=3)
    with aws.translated(settings, f"bootstrapping bucket {settings.bucket}"):
        created = ensure_bucket(s3, settings, report, dry_run)
        harden(s3, settings, report, dry_run, new_bucket=created)
    if dry_run and created:
        for name in settings.stacks:
            report.step("would create", f"stack {name}")
    else:
        login_and_init(pulumi, s3, settings, report, dry_run)
    where = settings.endpoint_url or settings.region
    report.summary(f"bootstrap of s3://{settings.bucket} ({where})"
                   + (" [dry run]" if dry_run else ""))
    return 0


def ensure_bucket(s3: Any, settings: Settings, report: Report,
                  dry_run: bool) -> bool:
    """Create the bucket if missing; return whether it is (to be) new."""
    name = settings.bucket
    if bucket_exists(s3, settings):
        report.step("ok", f"bucket {name}")
        return False
    if dry_run:
        report.step("would create", f"bucket {name}", settings.region)
        return True
    params: dict[str, Any] = {"Bucket": name}
    if settings.region != "us-east-1":
        params["CreateBucketConfiguration"] = {
            "LocationConstraint": settings.region}
    try:
        s3.create_bucket(**params)
    except bx.ClientError as exc:
        code = aws.error_code(exc)
        if code == "BucketAlreadyOwnedByYou":
            report.step("ok", f"bucket {name}")
            return False
        if code == "BucketAlreadyExists":
            raise taken(name) from None
        raise
    report.step("created", f"bucket {name}", settings.region)
    return True


def bucket_exists(s3: Any, settings: Settings) -> bool:
    """True if we can use the bucket, False if it does not exist."""
    try:
        s3.head_bucket(Bucket=settings.bucket)
    except bx.ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get(
            "HTTPStatusCode")
        if status == 404 or aws.error_code(exc) in {"404", "NoSuchBucket"}:
            return False
        if status == 403:
            raise taken(settings.bucket, maybe_denied=True) from None
        if status == 301:
            raise AwsError(
                f"bucket '{settings.bucket}' is in another region than "
                f"{settings.region}",
                "set AWS_REGION to the bucket's region",
            ) from None
        raise
    return True


def taken(name: str, *, maybe_denied: bool = False) -> AwsError:
    why = (" (or these credentials may not list it)" if maybe_denied
           else "")
    return AwsError(
        f"bucket name '{name}' belongs to another AWS account{why}",
        "bucket names are global: choose another STATE_BUCKET",
    )


def harden(s3: Any, settings: Settings, report: Report, dry_run: bool,
           *, new_bucket: bool) -> None:
    """Check each setting and make it comply."""
    for setting in bucket.settings_for(s3, settings):
        subject = setting.name
        if setting.skip_reason:
            report.step("skipped", subject, setting.skip_reason)
            continue
        if new_bucket and dry_run:
            report.step("would create", subject)
            continue
        try:
            current = setting.current()
            if setting.complies(current):
                report.step("ok", subject)
                continue
            if dry_run:
                report.step("would repair", subject)
                continue
            setting.put(current)
        except bucket.Unsupported:
            report.step("unsupported", subject,
                        "the store does not implement it")
            continue
        report.step("created" if new_bucket else "repaired", subject)


def login_and_init(pulumi: Pulumi, s3: Any, settings: Settings,
                   report: Report, dry_run: bool) -> None:
    """Log the CLI in to the backend and create the missing stacks."""
    url = settings.backend_url.split("?", 1)[0]
    if dry_run:
        report.step("would run", f"pulumi login {url}")
    else:
        pulumi.run("login", settings.backend_url)
        report.step("ok", f"pulumi login {url}")
    # Listing stacks on a backend with no meta.yaml makes the CLI write one;
    # a dry run must not, and such a backend has no stacks anyway.
    names = (stacks.existing(pulumi)
             if not dry_run or has_meta(s3, settings) else [])
    for name in settings.stacks:
        if name in names:
            report.step("ok", f"stack {name}")
        elif dry_run:
            report.step("would create", f"stack {name}")
        else:
            pulumi.run("stack", "init", name, "--no-select",
                       "--secrets-provider", settings.secrets_provider,
                       secrets=True)
            report.step("created", f"stack {name}",
                        f"secrets: {provider_label(settings)}")


def provider_label(settings: Settings) -> str:
    provider = settings.secrets_provider
    return provider.split("?", 1)[0] if provider != "passphrase" else (
        "passphrase")


def has_meta(s3: Any, settings: Settings) -> bool:
    key = f"{settings.state_root}meta.yaml"
    with aws.translated(settings, f"reading s3://{settings.bucket}/{key}"):
        listing = s3.list_objects_v2(Bucket=settings.bucket, Prefix=key,
                                     MaxKeys=1)
    return listing.get("KeyCount", 0) > 0
