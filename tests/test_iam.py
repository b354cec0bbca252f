"""``inv iam.policy`` and ``inv iam.apply``, and proof that the policy is
enough for Pulumi and no more: the real CLI deploys the ``yaml-app``
fixture with credentials holding only that policy, on a moto server that
enforces IAM, while the same credentials are refused everything else.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.exceptions as bx
import pytest
from botocore.config import Config
from conftest import FIXTURES, MotoServer, assert_clean_failure, start_moto

from statekeeper.config import build_backend_url

ACCOUNT = "123456789012"  # moto's account
BUCKET = "test-pulumi-state"
POLICY = f"statekeeper-state-{BUCKET}"
POLICY_ARN = f"arn:aws:iam::{ACCOUNT}:policy/{POLICY}"
ADMIN = {"aws_access_key_id": "testing",
         "aws_secret_access_key": "testing-secret-key"}


def client(endpoint: str, service: str, **credentials: str):
    return boto3.client(
        service, endpoint_url=endpoint, region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"},
                      retries={"max_attempts": 1}),
        **(credentials or ADMIN))


def statements(done) -> dict[str, dict]:
    assert done.returncode == 0, done.stderr
    return {s["Sid"]: s for s in json.loads(done.stdout)["Statement"]}


def actions(by_sid: dict[str, dict]) -> set[str]:
    found: set[str] = set()
    for statement in by_sid.values():
        listed = statement["Action"]
        found.update([listed] if isinstance(listed, str) else listed)
    return found


def steps(done) -> list[tuple[str, str]]:
    """(status, subject) of each step line of a Report."""
    assert done.returncode == 0, done.stderr
    found = []
    for line in done.stdout.splitlines():
        for status in ("would create", "would repair", "created", "ok",
                       "repaired"):
            if line.strip().startswith(status + "  "):
                found.append((status, line.strip()[len(status):].strip()))
                break
    return found


# --- inv iam.policy -------------------------------------------------------


def test_policy_allows_only_the_state_objects_and_listing(ws):
    done = ws.inv("iam.policy")

    by_sid = statements(done)
    assert actions(by_sid) == {"s3:ListBucket", "s3:GetObject",
                               "s3:PutObject", "s3:DeleteObject"}
    assert by_sid["ListStateBucket"]["Resource"] == f"arn:aws:s3:::{BUCKET}"
    assert by_sid["ReadWriteState"]["Resource"] == (
        f"arn:aws:s3:::{BUCKET}/.pulumi/*")
    assert all(s["Effect"] == "Allow" for s in by_sid.values())
    assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in done.stdout


def test_policy_follows_prefix_and_adds_kms_only_when_a_key_is_set(ws):
    ws.env["STATE_PREFIX"] = "team-a"
    ws.env["STATE_KMS_KEY_ID"] = (f"arn:aws:kms:us-east-1:{ACCOUNT}:key/"
                                  "1111-2222")
    ws.env["PULUMI_SECRETS_PROVIDER"] = (
        "awskms://alias/pulumi-secrets?region=eu-west-1")

    by_sid = statements(ws.inv("iam.policy"))

    assert by_sid["ReadWriteState"]["Resource"] == (
        f"arn:aws:s3:::{BUCKET}/team-a/.pulumi/*")
    kms = {"kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*",
           "kms:DescribeKey"}
    assert set(by_sid["UseStateKeys"]["Action"]) == kms
    assert by_sid["UseStateKeys"]["Resource"] == [ws.env["STATE_KMS_KEY_ID"]]
    alias = by_sid["UseStateKeyAliases"]
    assert set(alias["Action"]) == kms
    assert alias["Resource"] == "arn:aws:kms:eu-west-1:*:key/*"
    assert alias["Condition"] == {"ForAnyValue:StringEquals": {
        "kms:ResourceAliases": ["alias/pulumi-secrets"]}}


def test_policy_flag_overrides_bucket_and_bad_bucket_is_one_line(ws):
    by_sid = statements(ws.inv("iam.policy", "--bucket", "other-state"))
    assert by_sid["ListStateBucket"]["Resource"] == "arn:aws:s3:::other-state"

    assert_clean_failure(ws.inv("iam.policy", "--bucket", "Bad_Name"),
                         "Bad_Name", "not a valid S3 bucket name")


# --- inv iam.apply --------------------------------------------------------


def trust_of(iam, role: str = "statekeeper-deploy") -> dict:
    document = iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    return document if isinstance(document, dict) else json.loads(document)


def default_document(iam) -> dict:
    version = iam.get_policy(PolicyArn=POLICY_ARN)["Policy"][
        "DefaultVersionId"]
    document = iam.get_policy_version(
        PolicyArn=POLICY_ARN, VersionId=version)["PolicyVersion"]["Document"]
    return document if isinstance(document, dict) else json.loads(document)


def test_apply_creates_policy_provider_and_role_then_is_idempotent(ws):
    iam = client(ws.env["AWS_ENDPOINT_URL"], "iam")

    first = ws.inv("iam.apply", "--github-repo", "acme/infra")

    assert steps(first) == [
        ("created", f"policy {POLICY}"),
        ("created", "OIDC provider token.actions.githubusercontent.com"),
        ("created", "role statekeeper-deploy"),
        ("created", "policy attached to role statekeeper-deploy"),
    ]
    assert first.stdout.strip().endswith("4 created")
    [statement] = trust_of(iam)["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement["Principal"] == {"Federated": (
        f"arn:aws:iam::{ACCOUNT}:oidc-provider/"
        "token.actions.githubusercontent.com")}
    assert statement["Condition"] == {"StringEquals": {
        "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
        "token.actions.githubusercontent.com:sub":
            "repo:acme/infra:ref:refs/heads/main"}}
    provider = iam.get_open_id_connect_provider(
        OpenIDConnectProviderArn=statement["Principal"]["Federated"])
    assert provider["ClientIDList"] == ["sts.amazonaws.com"]
    attached = iam.list_attached_role_policies(
        RoleName="statekeeper-deploy")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [POLICY_ARN]
    assert default_document(iam) == json.loads(ws.inv("iam.policy").stdout)

    second = ws.inv("iam.apply", "--github-repo", "acme/infra")

    assert [status for status, _ in steps(second)] == ["ok"] * 4
    assert second.stdout.strip().endswith("4 ok")


def test_apply_repairs_a_widened_policy_and_trust(ws):
    iam = client(ws.env["AWS_ENDPOINT_URL"], "iam")
    assert ws.inv("iam.apply", "--github-repo", "acme/infra").returncode == 0
    wanted = default_document(iam)
    wide = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    for _ in range(5):  # fill IAM's five versions
        iam.create_policy_version(PolicyArn=POLICY_ARN,
                                  PolicyDocument=json.dumps(wide),
                                  SetAsDefault=True)
        if len(iam.list_policy_versions(
                PolicyArn=POLICY_ARN)["Versions"]) == 5:
            break
    trust = trust_of(iam)
    trust["Statement"][0]["Condition"]["StringLike"] = {
        "token.actions.githubusercontent.com:sub": "repo:acme/*"}
    del trust["Statement"][0]["Condition"]["StringEquals"][
        "token.actions.githubusercontent.com:sub"]
    iam.update_assume_role_policy(RoleName="statekeeper-deploy",
                                  PolicyDocument=json.dumps(trust))

    dry = ws.inv("iam.apply", "--github-repo", "acme/infra", "--dry-run")
    assert ("would repair", f"policy {POLICY}  (document differs)") in (
        steps(dry))
    assert default_document(iam) == wide

    done = ws.inv("iam.apply", "--github-repo", "acme/infra")

    assert dict((subject, status) for status, subject in steps(done)) == {
        f"policy {POLICY}  (new default version)": "repaired",
        "OIDC provider token.actions.githubusercontent.com": "ok",
        "role statekeeper-deploy  (trust policy replaced)": "repaired",
        "policy attached to role statekeeper-deploy": "ok",
    }
    assert default_document(iam) == wanted
    condition = trust_of(iam)["Statement"][0]["Condition"]
    assert condition == {"StringEquals": {
        "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
        "token.actions.githubusercontent.com:sub":
            "repo:acme/infra:ref:refs/heads/main"}}


def test_apply_environment_and_pull_requests_set_the_subjects(ws):
    iam = client(ws.env["AWS_ENDPOINT_URL"], "iam")

    done = ws.inv("iam.apply", "--github-repo", "acme/infra",
                  "--environment", "staging", "--pull-requests",
                  "--role-name", "infra-ci")

    assert done.returncode == 0, done.stderr
    condition = trust_of(iam, "infra-ci")["Statement"][0]["Condition"]
    assert sorted(condition["StringEquals"][
        "token.actions.githubusercontent.com:sub"]) == [
        "repo:acme/infra:environment:staging",
        "repo:acme/infra:pull_request"]


def test_apply_dry_run_changes_nothing(ws):
    iam = client(ws.env["AWS_ENDPOINT_URL"], "iam")

    done = ws.inv("iam.apply", "--github-repo", "acme/infra", "--dry-run")

    assert [status for status, _ in steps(done)] == ["would create"] * 4
    assert "[dry run]" in done.stdout
    assert iam.list_roles()["Roles"] == []
    assert iam.list_policies(Scope="Local")["Policies"] == []
    assert iam.list_open_id_connect_providers()[
        "OpenIDConnectProviderList"] == []


@pytest.mark.parametrize("flags, needle", [
    (("--github-repo", "acme"), "not owner/name"),
    (("--github-repo", "acme/infra", "--branch", "feat/*"),
     "not a plain branch name"),
    (("--github-repo", "acme/infra", "--role-name", "bad role"),
     "not a valid IAM role name"),
    (("--environment", "prod"), "need --github-repo"),
], ids=["repo without owner", "wildcard branch", "role name with space",
        "environment without repo"])
def test_apply_refuses_bad_input_and_changes_nothing(ws, flags, needle):
    iam = client(ws.env["AWS_ENDPOINT_URL"], "iam")

    assert_clean_failure(ws.inv("iam.apply", *flags), needle)

    assert iam.list_policies(Scope="Local")["Policies"] == []
    assert iam.list_roles()["Roles"] == []


# --- the policy against the real CLI, with IAM enforced -------------------


@pytest.fixture
def enforcing_moto() -> Iterator[MotoServer]:
    """A private moto server: enforcing IAM must not leak to other tests."""
    server = start_moto()
    yield server
    server.stop()


def test_policy_alone_runs_pulumi_and_is_refused_everything_else(
        workspace, enforcing_moto, pulumi_cli, tmp_path: Path):
    endpoint = enforcing_moto.endpoint
    passphrase = "pass-iam-test-0a1b2c"
    workspace.env.update({
        "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": ADMIN["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": ADMIN["aws_secret_access_key"],
        "STATE_BUCKET": BUCKET, "PULUMI_CONFIG_PASSPHRASE": passphrase,
    })
    s3 = client(endpoint, "s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.create_bucket(Bucket="other-bucket")
    s3.put_object(Bucket="other-bucket", Key="secret.txt", Body=b"x")
    applied = workspace.inv("iam.apply")
    assert steps(applied) == [("created", f"policy {POLICY}")]
    iam = client(endpoint, "iam")
    iam.create_user(UserName="ci")
    iam.attach_user_policy(UserName="ci", PolicyArn=POLICY_ARN)
    key = iam.create_access_key(UserName="ci")["AccessKey"]
    limited = {"aws_access_key_id": key["AccessKeyId"],
               "aws_secret_access_key": key["SecretAccessKey"]}
    enforcing_moto.enforce_iam()

    workspace.env.update({
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
        "PULUMI_BACKEND_URL": build_backend_url(BUCKET, "", "us-east-1",
                                                endpoint),
    })
    project = tmp_path / "project"
    shutil.copytree(FIXTURES / "yaml-app", project)
    workspace.pulumi("login", workspace.env["PULUMI_BACKEND_URL"])
    workspace.pulumi("stack", "init", "ci", "--secrets-provider",
                     "passphrase", cwd=project)
    workspace.pulumi("config", "set", "--secret", "apiToken",
                     "tok-iam-5e2f", "--stack", "ci", cwd=project)
    up = workspace.pulumi("up", "--yes", "--stack", "ci", cwd=project,
                          check=False)
    assert up.returncode == 0, up.stdout + up.stderr
    outputs = json.loads(workspace.pulumi(
        "stack", "output", "--json", "--stack", "ci", cwd=project).stdout)
    assert outputs["greeting"] == "hello"
    assert passphrase not in up.stdout + up.stderr
    assert "tok-iam-5e2f" not in up.stdout + up.stderr
    keys = [o["Key"] for o in client(endpoint, "s3", **limited)
            .list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert ".pulumi/stacks/yaml-app/ci.json" in keys

    denied = client(endpoint, "s3", **limited)
    refusals = {
        "delete the bucket": lambda: denied.delete_bucket(Bucket=BUCKET),
        "change its policy": lambda: denied.put_bucket_policy(
            Bucket=BUCKET, Policy=json.dumps({
                "Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{BUCKET}/*"}]})),
        "turn off versioning": lambda: denied.put_bucket_versioning(
            Bucket=BUCKET,
            VersioningConfiguration={"Status": "Suspended"}),
        "read another bucket": lambda: denied.get_object(
            Bucket="other-bucket", Key="secret.txt"),
        "list another bucket": lambda: denied.list_objects_v2(
            Bucket="other-bucket"),
        "write outside the state": lambda: denied.put_object(
            Bucket=BUCKET, Key="elsewhere.txt", Body=b"x"),
        "widen its own policy": lambda: client(
            endpoint, "iam", **limited).create_policy_version(
            PolicyArn=POLICY_ARN, SetAsDefault=True,
            PolicyDocument=json.dumps({"Version": "2012-10-17",
                                       "Statement": [{
                                           "Effect": "Allow",
                                           "Action": "*",
                                           "Resource": "*"}]})),
    }
    for what, attempt in refusals.items():
        with pytest.raises(bx.ClientError) as refused:
            attempt()
        code = refused.value.response["Error"]["Code"]
        assert code in {"AccessDenied", "AccessDeniedException"}, what
