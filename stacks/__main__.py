"""The Pulumi program of this workspace: the lesson's second S3 bucket.

Each stack reads its settings from ``Pulumi.<stack>.yaml`` (keys under the
project name, ``rocketseat-buckets:``):

- ``bucketName`` (required): the bucket to create;
- ``tags`` (object of strings): tags on every resource;
- ``kmsKeyId``: a KMS key for SSE-KMS with a bucket key (else SSE-S3);
- ``deployRoleName``: the role CI deploys with; when set, calls on the
  bucket by anyone else raise an alarm on an SNS topic;
- ``alertEmail``: an address subscribed to that topic;
- ``alertOnReads``: also alarm on read-only calls (default false).

Exports ``bucketName`` and ``bucketArn`` (and ``alarmTopicArn`` with the
alarm).
"""

from __future__ import annotations

import pulumi
from access_alarm import BucketAccessAlarm
from hardened_bucket import HardenedBucket


def string_tags(raw: object) -> dict[str, str]:
    """The ``tags`` setting, refusing anything but string keys/values."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str)
            for k, v in raw.items()):
        raise ValueError(
            "config 'tags' must map names to strings: quote values such "
            "as \"true\" in Pulumi.<stack>.yaml")
    return dict(raw)


config = pulumi.Config()
tags = string_tags(config.get_object("tags"))

bucket = HardenedBucket(
    "bucket",
    bucket_name=config.require("bucketName"),
    tags=tags,
    kms_key_id=config.get("kmsKeyId"),
)
pulumi.export("bucketName", bucket.name)
pulumi.export("bucketArn", bucket.arn)

deploy_role = config.get("deployRoleName")
if deploy_role:
    alarm = BucketAccessAlarm(
        "bucket-access",
        bucket_name=bucket.name,
        deploy_role_name=deploy_role,
        tags=tags,
        alert_email=config.get("alertEmail"),
        writes_only=not config.get_bool("alertOnReads"),
    )
    pulumi.export("alarmTopicArn", alarm.topic.arn)
