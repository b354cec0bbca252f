"""A hardened S3 bucket as one Pulumi component.

The same protections ``inv bootstrap`` gives the state bucket: every object
version kept, no public access of any kind, encryption at rest by default
(SSE-S3, or SSE-KMS with a bucket key when a KMS key is given), ACLs
switched off (the bucket owner owns every object) and a policy that refuses
any request not made over TLS.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import pulumi
import pulumi_aws as aws

COMPONENT_TYPE = "statekeeper:storage:HardenedBucket"


def tls_only_policy(bucket_arn: str) -> str:
    """A bucket policy denying every request made without TLS."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }],
    })


def encryption_rule(kms_key_id: str | None) -> dict[str, object]:
    """Default encryption: SSE-KMS with a bucket key, else SSE-S3."""
    if kms_key_id:
        by_default = {"sse_algorithm": "aws:kms",
                      "kms_master_key_id": kms_key_id}
    else:
        by_default = {"sse_algorithm": "AES256"}
    return {"apply_server_side_encryption_by_default": by_default,
            "bucket_key_enabled": True}


class HardenedBucket(pulumi.ComponentResource):
    """An S3 bucket with versioning, encryption, no public access, no ACLs
    and a TLS-only policy."""

    bucket: aws.s3.Bucket
    name: pulumi.Output[str]
    arn: pulumi.Output[str]

    def __init__(
        self,
        resource_name: str,
        *,
        bucket_name: str,
        tags: Mapping[str, str],
        kms_key_id: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(COMPONENT_TYPE, resource_name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        self.bucket = aws.s3.Bucket(
            resource_name, bucket=bucket_name, tags=dict(tags), opts=child)
        bucket_id = self.bucket.id

        ownership = aws.s3.BucketOwnershipControls(
            f"{resource_name}-ownership", bucket=bucket_id,
            rule={"object_ownership": "BucketOwnerEnforced"}, opts=child)
        public_block = aws.s3.BucketPublicAccessBlock(
            f"{resource_name}-public-access-block", bucket=bucket_id,
            block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True,
            opts=child)
        aws.s3.BucketVersioning(
            f"{resource_name}-versioning", bucket=bucket_id,
            versioning_configuration={"status": "Enabled"}, opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{resource_name}-encryption", bucket=bucket_id,
            rules=[encryption_rule(kms_key_id)], opts=child)
        # After the public access block and ownership: S3 answers a
        # conflict when bucket-level settings change at the same time.
        aws.s3.BucketPolicy(
            f"{resource_name}-tls-only", bucket=bucket_id,
            policy=self.bucket.arn.apply(tls_only_policy),
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[public_block, ownership]))

        self.name = self.bucket.bucket
        self.arn = self.bucket.arn
        self.register_outputs({"name": self.name, "arn": self.arn})
