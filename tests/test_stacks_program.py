"""The Pulumi program in ``stacks/``, run against the SDK's mocks.

No Python language host or AWS provider plugin can run here, so these tests
play the engine: every resource the program registers is recorded with its
inputs, and the checks read those inputs the way AWS would receive them.
The stack settings come from the real ``stacks/Pulumi.staging.yaml``.
"""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pulumi.runtime import settings as runtime_settings

STACKS = Path(__file__).resolve().parent.parent / "stacks"
ACCOUNT = "123456789012"
BUCKET = "segundo-bucket-rocketseat"

# pulumi_aws warns about its own deprecated V2 classes when imported.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:pulumi_aws.*")


def project_name() -> str:
    return yaml.safe_load((STACKS / "Pulumi.yaml").read_text())["name"]


def stack_config(stack: str) -> dict[str, str]:
    """The stack's settings as the engine hands them to the program."""
    doc = yaml.safe_load((STACKS / f"Pulumi.{stack}.yaml").read_text())
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in (doc.get("config") or {}).items()}


class Mocks(pulumi.runtime.Mocks):
    """Records every resource; answers like AWS would for ids and ARNs."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[str] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.resources.append(args)
        state = dict(args.inputs)
        if args.typ == "aws:s3/bucket:Bucket":
            name = args.inputs["bucket"]
            state["arn"] = f"arn:aws:s3:::{name}"
            return name, state
        if args.typ == "aws:sns/topic:Topic":
            state["arn"] = f"arn:aws:sns:us-east-1:{ACCOUNT}:{args.name}"
        if args.typ == "aws:cloudwatch/eventRule:EventRule":
            state["arn"] = (f"arn:aws:events:us-east-1:{ACCOUNT}:rule/"
                            f"{args.name}")
            state["name"] = args.name
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        self.calls.append(args.token)
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "id": ACCOUNT,
                    "arn": f"arn:aws:iam::{ACCOUNT}:user/ci",
                    "userId": "AIDATESTING"}
        return {}

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str) -> dict[str, Any]:
        found = self.of_type(typ)
        assert len(found) == 1, f"{typ}: {len(found)} registered"
        return found[0].inputs


Deploy = Callable[..., tuple[Mocks, dict[str, Any]]]


@pytest.fixture
def deploy() -> Iterator[Deploy]:
    """Run the program on fresh mocks; returns (mocks, resolved exports)."""
    sys.path.insert(0, str(STACKS))

    def run(config: dict[str, str]) -> tuple[Mocks, dict[str, Any]]:
        mocks = Mocks()
        runtime_settings.ROOT.set(None)  # a new Stack for each run
        pulumi.runtime.set_mocks(mocks, project=project_name(),
                                 stack="staging", preview=False)
        pulumi.runtime.set_all_config(config)
        exports: dict[str, Any] = {}

        @pulumi.runtime.test
        def program():
            runpy.run_path(str(STACKS / "__main__.py"),
                           run_name="stacks_program")
            outputs = runtime_settings.get_root_resource().outputs
            names = sorted(outputs)
            return pulumi.Output.all(*(outputs[n] for n in names)).apply(
                lambda values: exports.update(zip(names, values, strict=True)))

        program()
        return mocks, exports

    yield run
    sys.path.remove(str(STACKS))
    runtime_settings.ROOT.set(None)
    pulumi.runtime.set_all_config({})


def staging(**changes: str | None) -> dict[str, str]:
    config = stack_config("staging")
    prefix = project_name()
    for key, value in changes.items():
        if value is None:
            config.pop(f"{prefix}:{key}", None)
        else:
            config[f"{prefix}:{key}"] = value
    return config


def test_staging_creates_the_named_tagged_bucket_and_exports_it(deploy):
    mocks, exports = deploy(staging())

    bucket = mocks.one("aws:s3/bucket:Bucket")
    assert bucket["bucket"] == BUCKET
    assert bucket["tags"] == {"ManagedBy": "IaC", "IaC": "true"}
    assert exports["bucketName"] == BUCKET
    assert exports["bucketArn"] == f"arn:aws:s3:::{BUCKET}"


def test_bucket_gets_every_hardening_setting(deploy):
    mocks, _ = deploy(staging())

    versioning = mocks.one("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning["bucket"] == BUCKET
    assert versioning["versioningConfiguration"] == {"status": "Enabled"}

    block = mocks.one(
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert block["bucket"] == BUCKET
    for flag in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                 "restrictPublicBuckets"):
        assert block[flag] is True, flag

    ownership = mocks.one(
        "aws:s3/bucketOwnershipControls:BucketOwnershipControls")
    assert ownership["bucket"] == BUCKET
    assert ownership["rule"] == {"objectOwnership": "BucketOwnerEnforced"}

    encryption = mocks.one("aws:s3/bucketServerSideEncryptionConfiguration:"
                           "BucketServerSideEncryptionConfiguration")
    assert encryption["bucket"] == BUCKET
    [rule] = encryption["rules"]
    assert rule["applyServerSideEncryptionByDefault"] == {
        "sseAlgorithm": "AES256"}
    assert rule["bucketKeyEnabled"] is True


def test_bucket_policy_refuses_requests_without_tls(deploy):
    mocks, _ = deploy(staging())

    policy = mocks.one("aws:s3/bucketPolicy:BucketPolicy")
    assert policy["bucket"] == BUCKET
    [statement] = json.loads(policy["policy"])["Statement"]
    assert statement["Effect"] == "Deny"
    assert statement["Principal"] == "*"
    assert statement["Action"] == "s3:*"
    assert statement["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}}
    assert sorted(statement["Resource"]) == [
        f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]


def test_kms_key_setting_switches_to_sse_kms_with_bucket_key(deploy):
    key = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd"
    mocks, _ = deploy(staging(kmsKeyId=key))

    encryption = mocks.one("aws:s3/bucketServerSideEncryptionConfiguration:"
                           "BucketServerSideEncryptionConfiguration")
    [rule] = encryption["rules"]
    assert rule["applyServerSideEncryptionByDefault"] == {
        "sseAlgorithm": "aws:kms", "kmsMasterKeyId": key}
    assert rule["bucketKeyEnabled"] is True


def test_alarm_fires_on_writes_by_anyone_but_the_deploy_role(deploy):
    mocks, exports = deploy(staging(alertEmail="ops@example.com"))

    role = stack_config("staging")[f"{project_name()}:deployRoleName"]
    rule = mocks.one("aws:cloudwatch/eventRule:EventRule")
    pattern = json.loads(rule["eventPattern"])
    assert pattern["source"] == ["aws.s3"]
    assert pattern["detail-type"] == ["AWS API Call via CloudTrail"]
    detail = pattern["detail"]
    assert detail["requestParameters"] == {"bucketName": [BUCKET]}
    assert detail["userIdentity"]["arn"] == [{"anything-but": {
        "prefix": f"arn:aws:sts::{ACCOUNT}:assumed-role/{role}/"}}]
    assert detail["readOnly"] == [False]
    assert rule["tags"] == {"ManagedBy": "IaC", "IaC": "true"}

    topic_arn = exports["alarmTopicArn"]
    target = mocks.one("aws:cloudwatch/eventTarget:EventTarget")
    assert target["arn"] == topic_arn
    assert target["rule"] == "bucket-access-rule"

    policy = json.loads(mocks.one("aws:sns/topicPolicy:TopicPolicy")
                        ["policy"])
    [statement] = policy["Statement"]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sns:Publish"
    assert statement["Resource"] == topic_arn
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"].endswith(
        ":rule/bucket-access-rule")

    subscription = mocks.one("aws:sns/topicSubscription:TopicSubscription")
    assert subscription == {"topic": topic_arn, "protocol": "email",
                            "endpoint": "ops@example.com"}


def test_alarm_on_reads_when_asked_and_none_without_a_deploy_role(deploy):
    mocks, _ = deploy(staging(alertOnReads="true"))
    pattern = json.loads(mocks.one("aws:cloudwatch/eventRule:EventRule")
                         ["eventPattern"])
    assert "readOnly" not in pattern["detail"]
    assert not mocks.of_type("aws:sns/topicSubscription:TopicSubscription")

    mocks, exports = deploy(staging(deployRoleName=None))
    assert not mocks.of_type("aws:cloudwatch/eventRule:EventRule")
    assert "alarmTopicArn" not in exports
    assert mocks.one("aws:s3/bucket:Bucket")["bucket"] == BUCKET


def test_tags_that_are_not_strings_are_refused(deploy):
    with pytest.raises(Exception, match="quote values"):
        deploy(staging(tags=json.dumps({"IaC": True})))


def test_staging_settings_survive_stack_init(deploy, pulumi_cli, tmp_path):
    """`pulumi stack init` (run by inv bootstrap) rewrites
    Pulumi.staging.yaml with an `encryptionsalt`; the program must read the
    same settings afterwards."""
    project = tmp_path / "stacks"
    project.mkdir()
    for name in ("Pulumi.yaml", "Pulumi.staging.yaml"):
        shutil.copy(STACKS / name, project / name)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "PULUMI_HOME": str(tmp_path / ".pulumi"),
           "PULUMI_SKIP_UPDATE_CHECK": "true",
           "PULUMI_BACKEND_URL": (tmp_path / "state").as_uri(),
           "PULUMI_CONFIG_PASSPHRASE": "pass-stack-init-test"}
    (tmp_path / "state").mkdir()
    done = subprocess.run(
        [str(pulumi_cli), "stack", "init", "staging", "--secrets-provider",
         "passphrase", "--non-interactive"],
        cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rewritten = yaml.safe_load((project / "Pulumi.staging.yaml").read_text())
    assert rewritten["encryptionsalt"]
    config = {key: value if isinstance(value, str) else json.dumps(value)
              for key, value in rewritten["config"].items()}
    assert config == stack_config("staging")

    mocks, exports = deploy(config)

    assert exports["bucketName"] == BUCKET
    assert mocks.one("aws:s3/bucket:Bucket")["tags"] == {
        "ManagedBy": "IaC", "IaC": "true"}
