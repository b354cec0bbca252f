"""The state bucket's hardening, one setting at a time.

Each :class:`Setting` knows how to read its current value, whether that value
already complies (judged by effect, not by names or Sids), and how to make it
comply while keeping whatever else is there (other tags, other policy
statements, other lifecycle rules).  ``inv bootstrap`` repairs with them and
``inv doctor`` only reads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import botocore.exceptions as bx

from statekeeper import TOOL_NAME
from statekeeper.aws import error_code, is_unsupported

if TYPE_CHECKING:
    from collections.abc import Callable

    from statekeeper.config import Settings

TAGS = {"IaC": "true", "ManagedBy": TOOL_NAME}
TLS_SID = "DenyInsecureTransport"
LIFECYCLE_ID = f"{TOOL_NAME}-expire-old-versions"
ABORT_UPLOADS_DAYS = 1

# Error codes meaning "this bucket has no such configuration yet".
_ABSENT = {
    "NoSuchPublicAccessBlockConfiguration",
    "ServerSideEncryptionConfigurationNotFoundError",
    "OwnershipControlsNotFoundError",
    "NoSuchBucketPolicy",
    "NoSuchTagSet",
    "NoSuchTagSetError",
    "NoSuchLifecycleConfiguration",
}


class Unsupported(Exception):
    """The store answered 501/NotImplemented for this setting."""


@dataclass
class Setting:
    name: str
    read: Callable[[], Any]
    complies: Callable[[Any], bool]
    apply: Callable[[Any], None]
    # Why the setting must not be applied here, if it must not.
    skip_reason: str | None = None

    def current(self) -> Any:
        """The current value, None when absent; Unsupported if the store
        lacks the feature."""
        try:
            return self.read()
        except bx.ClientError as exc:
            if error_code(exc) in _ABSENT:
                return None
            if is_unsupported(exc):
                raise Unsupported(self.name) from None
            raise

    def put(self, current: Any) -> None:
        try:
            self.apply(current)
        except bx.ClientError as exc:
            if is_unsupported(exc):
                raise Unsupported(self.name) from None
            raise


def settings_for(s3: Any, settings: Settings) -> list[Setting]:
    """Every hardening setting of the state bucket, in the order applied."""
    bucket = settings.bucket
    skip_policy = None
    if settings.uses_plain_http:
        skip_policy = ("plain-HTTP endpoint: a TLS-only policy would lock "
                       "every client out, so it is not applied")

    return [
        Setting(
            "versioning",
            lambda: s3.get_bucket_versioning(Bucket=bucket).get("Status"),
            lambda status: status == "Enabled",
            lambda _: s3.put_bucket_versioning(
                Bucket=bucket,
                VersioningConfiguration={"Status": "Enabled"}),
        ),
        Setting(
            "public access block",
            lambda: s3.get_public_access_block(Bucket=bucket)
            ["PublicAccessBlockConfiguration"],
            _blocks_all_public_access,
            lambda _: s3.put_public_access_block(
                Bucket=bucket,
                PublicAccessBlockConfiguration=dict.fromkeys(
                    _PUBLIC_FLAGS, True)),
        ),
        Setting(
            "default encryption",
            lambda: s3.get_bucket_encryption(Bucket=bucket)
            ["ServerSideEncryptionConfiguration"]["Rules"],
            lambda rules: _encryption_complies(rules, settings.kms_key_id),
            lambda _: s3.put_bucket_encryption(
                Bucket=bucket,
                ServerSideEncryptionConfiguration={
                    "Rules": [_encryption_rule(settings.kms_key_id)]}),
        ),
        Setting(
            "object ownership",
            lambda: [r.get("ObjectOwnership") for r in
                     s3.get_bucket_ownership_controls(Bucket=bucket)
                     ["OwnershipControls"]["Rules"]],
            lambda rules: rules == ["BucketOwnerEnforced"],
            lambda _: s3.put_bucket_ownership_controls(
                Bucket=bucket,
                OwnershipControls={
                    "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}),
        ),
        Setting(
            "TLS-only policy",
            lambda: json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]),
            lambda policy: has_tls_deny(policy, bucket),
            lambda policy: s3.put_bucket_policy(
                Bucket=bucket,
                Policy=json.dumps(merge_tls_deny(policy, bucket))),
            skip_reason=skip_policy,
        ),
        Setting(
            "tags",
            lambda: {t["Key"]: t["Value"] for t in
                     s3.get_bucket_tagging(Bucket=bucket)["TagSet"]},
            lambda tags: all((tags or {}).get(k) == v
                             for k, v in TAGS.items()),
            lambda tags: s3.put_bucket_tagging(
                Bucket=bucket,
                Tagging={"TagSet": [
                    {"Key": k, "Value": v}
                    for k, v in {**(tags or {}), **TAGS}.items()]}),
        ),
        Setting(
            "lifecycle",
            lambda: s3.get_bucket_lifecycle_configuration(Bucket=bucket)
            ["Rules"],
            lambda rules: _lifecycle_complies(rules,
                                              settings.noncurrent_days),
            lambda rules: s3.put_bucket_lifecycle_configuration(
                Bucket=bucket,
                LifecycleConfiguration={"Rules": merge_lifecycle(
                    rules, settings.noncurrent_days)}),
        ),
    ]


_PUBLIC_FLAGS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                 "RestrictPublicBuckets")


def _blocks_all_public_access(config: dict[str, bool] | None) -> bool:
    return bool(config) and all(config.get(flag) for flag in _PUBLIC_FLAGS)


def _encryption_rule(kms_key_id: str | None) -> dict[str, Any]:
    if kms_key_id:
        return {"ApplyServerSideEncryptionByDefault": {
                    "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key_id},
                "BucketKeyEnabled": True}
    return {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}


def _encryption_complies(rules: list[dict[str, Any]] | None,
                         kms_key_id: str | None) -> bool:
    for rule in rules or []:
        default = rule.get("ApplyServerSideEncryptionByDefault", {})
        algorithm = default.get("SSEAlgorithm")
        if kms_key_id:
            key = default.get("KMSMasterKeyID", "")
            if (algorithm == "aws:kms" and rule.get("BucketKeyEnabled")
                    and (key == kms_key_id or key.endswith(
                        f"/{kms_key_id}"))):
                return True
        elif algorithm in {"AES256", "aws:kms", "aws:kms:dsse"}:
            return True
    return False


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _denies_insecure_transport(statement: dict[str, Any]) -> bool:
    condition = statement.get("Condition", {})
    for operator in ("Bool", "BoolIfExists"):
        flag = condition.get(operator, {}).get("aws:SecureTransport")
        if flag is None:
            continue
        values = [str(v).lower() for v in _as_list(flag)]
        if values == ["false"]:
            return True
    return False


def _everyone(principal: Any) -> bool:
    if principal == "*":
        return True
    return isinstance(principal, dict) and _as_list(
        principal.get("AWS")) == ["*"]


def has_tls_deny(policy: dict[str, Any] | None, bucket: str) -> bool:
    """Whether some statement denies every non-TLS request to the bucket and
    its objects, whatever its Sid."""
    for statement in _as_list((policy or {}).get("Statement")):
        if (statement.get("Effect") == "Deny"
                and _everyone(statement.get("Principal"))
                and {"s3:*", "*"} & set(_as_list(statement.get("Action")))
                and _covers_bucket(statement.get("Resource"), bucket)
                and _denies_insecure_transport(statement)):
            return True
    return False


def _covers_bucket(resource: Any, bucket: str) -> bool:
    """Whether a Resource names both the bucket and all its objects."""
    arns = set(_as_list(resource))
    whole = {"*", f"arn:aws:s3:::{bucket}*"}
    return bool(arns & whole) or {
        f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"} <= arns


def tls_deny_statement(bucket: str, sid: str = TLS_SID) -> dict[str, Any]:
    return {
        "Sid": sid,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def merge_tls_deny(policy: dict[str, Any] | None,
                   bucket: str) -> dict[str, Any]:
    """The policy with a TLS-only deny added; other statements kept."""
    merged = dict(policy or {"Version": "2012-10-17"})
    statements = _as_list(merged.get("Statement"))
    if has_tls_deny(merged, bucket):
        return merged
    taken = {s.get("Sid") for s in statements}
    sid = TLS_SID
    while sid in taken:
        sid += "X"
    merged["Statement"] = [*statements, tls_deny_statement(bucket, sid)]
    return merged


def _whole_bucket(rule: dict[str, Any]) -> bool:
    if rule.get("Prefix"):
        return False
    flt = rule.get("Filter")
    return flt in (None, {}) or flt == {"Prefix": ""}


def _lifecycle_complies(rules: list[dict[str, Any]] | None,
                        days: int) -> bool:
    live = [r for r in rules or [] if r.get("Status") == "Enabled"
            and _whole_bucket(r)]
    expires = any(r.get("NoncurrentVersionExpiration", {})
                  .get("NoncurrentDays") == days for r in live)
    aborts = any(0 < r.get("AbortIncompleteMultipartUpload", {})
                 .get("DaysAfterInitiation", 0) <= ABORT_UPLOADS_DAYS
                 for r in live)
    return expires and aborts


def merge_lifecycle(rules: list[dict[str, Any]] | None,
                    days: int) -> list[dict[str, Any]]:
    """Other rules kept; ours (by ID) replaced with the wanted one."""
    kept = [r for r in rules or [] if r.get("ID") != LIFECYCLE_ID]
    return [*kept, {
        "ID": LIFECYCLE_ID,
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "NoncurrentVersionExpiration": {"NoncurrentDays": days},
        "AbortIncompleteMultipartUpload": {
            "DaysAfterInitiation": ABORT_UPLOADS_DAYS},
    }]
