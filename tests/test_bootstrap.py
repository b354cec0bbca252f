"""``inv bootstrap`` against a moto server, through the real command line,
with every setting read back with boto3 and the stacks checked with the real
Pulumi CLI."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import assert_clean_failure

from statekeeper import bucket as hardening

BUCKET = "test-pulumi-state"
FIXTURE = "yaml-app"


@pytest.fixture
def project(ws, tmp_path):
    from conftest import FIXTURES

    target = tmp_path / FIXTURE
    shutil.copytree(FIXTURES / FIXTURE, target)
    ws.env["PULUMI_PROJECT_DIR"] = str(target)
    ws.env["PULUMI_STACKS"] = "staging,production"
    return target


def bucket_configuration(s3) -> dict:
    """Every setting bootstrap manages, as S3 reports it."""

    def read(call, key, **kwargs):
        try:
            return call(Bucket=BUCKET, **kwargs).get(key)
        except s3.exceptions.ClientError as exc:
            return exc.response["Error"]["Code"]

    return {
        "versioning": read(s3.get_bucket_versioning, "Status"),
        "public": read(s3.get_public_access_block,
                       "PublicAccessBlockConfiguration"),
        "encryption": read(s3.get_bucket_encryption,
                           "ServerSideEncryptionConfiguration"),
        "ownership": read(s3.get_bucket_ownership_controls,
                          "OwnershipControls"),
        "policy": read(s3.get_bucket_policy, "Policy"),
        "tags": read(s3.get_bucket_tagging, "TagSet"),
        "lifecycle": read(s3.get_bucket_lifecycle_configuration, "Rules"),
    }


def test_bootstrap_creates_a_hardened_bucket_and_the_stacks(
        ws, s3, project, pulumi_cli):
    done = ws.inv("bootstrap")
    assert done.returncode == 0, done.stderr

    config = bucket_configuration(s3)
    assert config["versioning"] == "Enabled"
    assert all(config["public"][flag] for flag in (
        "BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
        "RestrictPublicBuckets"))
    rule = config["encryption"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == (
        "AES256")
    assert config["ownership"]["Rules"] == [
        {"ObjectOwnership": "BucketOwnerEnforced"}]
    tags = {t["Key"]: t["Value"] for t in config["tags"]}
    assert tags == {"IaC": "true", "ManagedBy": "statekeeper"}
    (lifecycle,) = config["lifecycle"]
    assert lifecycle["NoncurrentVersionExpiration"]["NoncurrentDays"] == 90
    assert lifecycle["AbortIncompleteMultipartUpload"][
        "DaysAfterInitiation"] == 1
    # moto serves plain HTTP, where a TLS-only policy would lock us out.
    assert config["policy"] == "NoSuchBucketPolicy"
    assert "plain-HTTP endpoint" in done.stdout

    meta = s3.get_object(Bucket=BUCKET, Key=".pulumi/meta.yaml")
    assert b"version: 1" in meta["Body"].read()
    listed = ws.pulumi("stack", "ls", "--json", cwd=project)
    assert sorted(s["name"] for s in json.loads(listed.stdout)) == [
        "production", "staging"]
    assert "encryptionsalt" in (project / "Pulumi.staging.yaml").read_text()
    # bucket, six settings, two stacks
    assert "9 created" in done.stdout.splitlines()[-1]
    assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in done.stdout + done.stderr


def test_second_run_reports_ok_and_changes_nothing(ws, s3, project,
                                                   pulumi_cli):
    assert ws.inv("bootstrap").returncode == 0
    before = bucket_configuration(s3)
    objects = s3.list_object_versions(Bucket=BUCKET).get("Versions")

    again = ws.inv("bootstrap")

    assert again.returncode == 0, again.stderr
    assert bucket_configuration(s3) == before
    assert s3.list_object_versions(Bucket=BUCKET).get("Versions") == objects
    summary = again.stdout.splitlines()[-1]
    assert "created" not in summary and "repaired" not in summary
    assert "10 ok" in summary


@pytest.mark.parametrize("remove, subject", [
    (lambda s3: s3.put_bucket_versioning(
        Bucket=BUCKET, VersioningConfiguration={"Status": "Suspended"}),
     "versioning"),
    (lambda s3: s3.delete_public_access_block(Bucket=BUCKET),
     "public access block"),
    (lambda s3: s3.delete_bucket_encryption(Bucket=BUCKET),
     "default encryption"),
    (lambda s3: s3.delete_bucket_ownership_controls(Bucket=BUCKET),
     "object ownership"),
    (lambda s3: s3.put_bucket_tagging(Bucket=BUCKET, Tagging={"TagSet": [
        {"Key": "team", "Value": "platform"}]}), "tags"),
    (lambda s3: s3.delete_bucket_lifecycle(Bucket=BUCKET), "lifecycle"),
], ids=["versioning suspended", "public access block removed",
        "encryption removed", "ownership removed", "tags replaced",
        "lifecycle removed"])
def test_a_setting_removed_by_hand_is_repaired_alone(ws, s3, project,
                                                     pulumi_cli, remove,
                                                     subject):
    assert ws.inv("bootstrap").returncode == 0
    expected = bucket_configuration(s3)
    remove(s3)

    done = ws.inv("bootstrap")

    assert done.returncode == 0, done.stderr
    repaired = [ln.split("repaired", 1)[1].strip()
                for ln in done.stdout.splitlines()
                if ln.strip().startswith("repaired")]
    assert repaired == [subject]
    after = bucket_configuration(s3)
    if subject == "tags":
        tags = {t["Key"]: t["Value"] for t in after["tags"]}
        assert tags == {"team": "platform", "IaC": "true",
                        "ManagedBy": "statekeeper"}
    else:
        assert after == expected


def test_dry_run_on_an_empty_store_creates_nothing(ws, s3, project):
    done = ws.inv("bootstrap", "--dry-run")

    assert done.returncode == 0, done.stderr
    assert s3.list_buckets()["Buckets"] == []
    assert "would create" in done.stdout
    assert "[dry run]" in done.stdout
    assert not (project / "Pulumi.staging.yaml").exists()


def test_dry_run_reports_drift_without_repairing(ws, s3, project,
                                                 pulumi_cli):
    assert ws.inv("bootstrap").returncode == 0
    s3.delete_bucket_encryption(Bucket=BUCKET)
    before = bucket_configuration(s3)

    done = ws.inv("bootstrap", "--dry-run", "--stacks", "staging,qa")

    assert done.returncode == 0, done.stderr
    assert bucket_configuration(s3) == before
    lines = [ln.strip() for ln in done.stdout.splitlines()]
    assert "would repair  default encryption" in lines
    assert "would create  stack qa" in lines
    listed = ws.pulumi("stack", "ls", "--json", cwd=project)
    assert "qa" not in listed.stdout


def test_other_region_creates_the_bucket_there(ws, s3, project, pulumi_cli):
    ws.env["AWS_REGION"] = "eu-west-1"
    done = ws.inv("bootstrap")
    assert done.returncode == 0, done.stderr
    location = s3.get_bucket_location(Bucket=BUCKET)["LocationConstraint"]
    assert location == "eu-west-1"


def test_kms_encryption_with_bucket_key(ws, s3, project, pulumi_cli):
    ws.env["STATE_KMS_KEY_ID"] = "alias/pulumi-state"
    assert ws.inv("bootstrap").returncode == 0
    rule = bucket_configuration(s3)["encryption"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/pulumi-state"}
    assert rule["BucketKeyEnabled"] is True


def test_existing_policy_statements_and_tls_deny_are_recognised_by_effect():
    other = {"Sid": "AllowAudit", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::1:role/audit"},
             "Action": "s3:GetObject",
             "Resource": f"arn:aws:s3:::{BUCKET}/*"}
    policy = {"Version": "2012-10-17", "Statement": [other]}

    merged = hardening.merge_tls_deny(policy, BUCKET)

    assert merged["Statement"][0] == other
    assert hardening.has_tls_deny(merged, BUCKET)
    # The same deny under another Sid, with a boolean and list-shaped
    # fields, counts as compliant: no second statement is added.
    equivalent = {"Statement": [{
        "Sid": "EnforceTLS", "Effect": "Deny", "Principal": {"AWS": ["*"]},
        "Action": ["s3:*"], "Resource": f"arn:aws:s3:::{BUCKET}*",
        "Condition": {"Bool": {"aws:SecureTransport": False}}}]}
    assert hardening.has_tls_deny(equivalent, BUCKET)
    assert hardening.merge_tls_deny(equivalent, BUCKET) == equivalent
    # A deny that only covers objects, or allows, is not enough.
    partial = {"Statement": [{
        **equivalent["Statement"][0],
        "Resource": f"arn:aws:s3:::{BUCKET}/*"}]}
    assert not hardening.has_tls_deny(partial, BUCKET)
    # A Sid already taken by another statement is not overwritten.
    clash = {"Statement": [{**other, "Sid": hardening.TLS_SID}]}
    sids = [s["Sid"] for s in
            hardening.merge_tls_deny(clash, BUCKET)["Statement"]]
    assert len(set(sids)) == 2


def test_lifecycle_keeps_other_rules_and_recognises_equivalents():
    logs = {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
            "Expiration": {"Days": 30}}
    merged = hardening.merge_lifecycle([logs], 90)
    assert merged[0] == logs
    assert hardening._lifecycle_complies(merged, 90)
    assert not hardening._lifecycle_complies(merged, 30)
    split = [
        {"ID": "a", "Status": "Enabled", "Filter": {},
         "NoncurrentVersionExpiration": {"NoncurrentDays": 90}},
        {"ID": "b", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}},
    ]
    assert hardening._lifecycle_complies(split, 90)
    assert not hardening._lifecycle_complies(
        [{**r, "Status": "Disabled"} for r in split], 90)


def test_a_setting_the_store_lacks_is_reported_unsupported(ws, s3, project,
                                                           moto, pulumi_cli):
    """S3-compatible stores answer 501 NotImplemented for some settings
    (SeaweedFS for the public access block); bootstrap goes on."""
    from fault_proxy import FaultProxy

    with FaultProxy(moto.endpoint, failures=10**6, status=501,
                    code="NotImplemented",
                    match=lambda method, path: "publicAccessBlock" in path,
                    ) as store:
        ws.env["AWS_ENDPOINT_URL"] = store.endpoint
        done = ws.inv("bootstrap")
        again = ws.inv("bootstrap")

    assert done.returncode == 0, done.stderr
    lines = [ln.strip() for ln in done.stdout.splitlines()]
    assert ("unsupported  public access block  (the store does not "
            "implement it)") in lines
    assert "1 unsupported" in lines[-1]
    assert bucket_configuration(s3)["versioning"] == "Enabled"
    assert again.returncode == 0
    assert "repaired" not in again.stdout


@pytest.mark.parametrize("refusal", ["head", "create"])
def test_a_bucket_name_taken_by_another_account_is_refused(
        ws, s3, project, moto, refusal):
    """What AWS answers for a name another account owns: 403 to HEAD, or
    409 BucketAlreadyExists to CreateBucket when HEAD says 404.  A proxy
    answers so; moto alone has one account and no such buckets."""
    from fault_proxy import FaultProxy

    if refusal == "head":
        fault = {"status": 403, "code": "AccessDenied",
                 "match": lambda method, path: method == "HEAD"
                 and path.rstrip("/") == f"/{BUCKET}"}
    else:
        fault = {"status": 409, "code": "BucketAlreadyExists",
                 "match": lambda method, path: method == "PUT"
                 and path.rstrip("/") == f"/{BUCKET}"}
    before = sorted(p.name for p in project.iterdir())
    with FaultProxy(moto.endpoint, failures=10**6, **fault) as store:
        ws.env["AWS_ENDPOINT_URL"] = store.endpoint
        done = ws.inv("bootstrap")
        assert store.refused >= 1

    line = assert_clean_failure(done, f"bucket name '{BUCKET}' belongs to "
                                "another AWS account", "choose another "
                                "STATE_BUCKET")
    assert ("may not list it" in line) == (refusal == "head")
    assert BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert sorted(p.name for p in project.iterdir()) == before
