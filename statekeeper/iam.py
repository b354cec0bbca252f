"""Least-privilege identity for running Pulumi against the state bucket.

``policy_document`` is the smallest IAM policy the Pulumi CLI needs on this
backend: list the state bucket, read/write/delete objects under the state
root (``.pulumi/`` or ``PREFIX/.pulumi/``), and use the KMS keys of the
bucket encryption and of an ``awskms://`` secrets provider, if any.
Nothing on the bucket itself (its policy, versioning, deletion) and nothing
on other buckets.

Why ``s3:ListBucket`` carries no ``s3:prefix`` condition: every CLI login
and ``stack init`` reads keys that do not exist yet (``meta.yaml``, the new
stack's checkpoint).  S3 answers such a read with 404 only when the caller
may list the bucket, otherwise with 403, which the CLI treats as a failure.
The 404 decision is made for a GetObject/HeadObject request, which has no
``s3:prefix`` key, so a prefix-conditioned ListBucket does not count.
Listing reveals key names only, never contents; keep the state in a
bucket of its own and nothing else is revealed.

``apply`` installs that policy as a managed policy and, for a GitHub
repository, the GitHub Actions OIDC provider and a role that only that
repository's branch (or environment) can assume.  Like ``inv bootstrap``
every step reports ``created``, ``ok`` or ``repaired``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import botocore.exceptions as bx

from statekeeper import aws
from statekeeper.errors import ConfigError
from statekeeper.output import Report

if TYPE_CHECKING:
    from statekeeper.config import Settings

GITHUB_OIDC_HOST = "token.actions.githubusercontent.com"
GITHUB_AUDIENCE = "sts.amazonaws.com"
DEFAULT_ROLE = "statekeeper-deploy"
KMS_ACTIONS = ["kms:Decrypt", "kms:DescribeKey", "kms:Encrypt",
               "kms:GenerateDataKey*"]
# IAM keeps at most five versions of a managed policy.
MAX_POLICY_VERSIONS = 5

_REPO_RE = re.compile(r"^[A-Za-z0-9-]{1,39}/[A-Za-z0-9._-]{1,100}$")
_BRANCH_RE = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")
_ENVIRONMENT_RE = re.compile(r"^[A-Za-z0-9._-]{1,255}$")
_ROLE_RE = re.compile(r"^[A-Za-z0-9+=,.@_-]{1,64}$")


def partition(region: str) -> str:
    """The ARN partition of a region: aws, aws-cn or aws-us-gov."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def policy_name(settings: Settings) -> str:
    return f"statekeeper-state-{settings.bucket}"


# --- the policy document --------------------------------------------------


def kms_key_refs(settings: Settings) -> list[tuple[str, str]]:
    """(key, region) of each KMS key the backend uses, bucket key first."""
    refs: list[tuple[str, str]] = []
    if settings.kms_key_id:
        refs.append((settings.kms_key_id, settings.region))
    provider = settings.secrets_provider
    if provider.startswith("awskms://"):
        parts = urlsplit(provider)
        key = (parts.netloc + parts.path).lstrip("/")
        region = parse_qs(parts.query).get("region", [settings.region])[0]
        if key:
            refs.append((key, region))
    return refs


def kms_statements(settings: Settings) -> list[dict[str, Any]]:
    """Allow the key actions on key ARNs, and on aliases by condition."""
    keys: list[str] = []
    aliases: dict[str, list[str]] = {}
    for key, region in kms_key_refs(settings):
        arn_partition = partition(region)
        if key.startswith("arn:") and ":key/" in key:
            keys.append(key)
        elif key.startswith("arn:") and ":alias/" in key:
            fields = key.split(":")
            region = fields[3] or region
            aliases.setdefault(region, []).append(fields[5])
        elif key.startswith("alias/"):
            aliases.setdefault(region, []).append(key)
        else:
            # A bare key id: the account is whatever owns that id.
            keys.append(f"arn:{arn_partition}:kms:{region}:*:key/{key}")
    statements: list[dict[str, Any]] = []
    if keys:
        statements.append({
            "Sid": "UseStateKeys", "Effect": "Allow",
            "Action": KMS_ACTIONS, "Resource": sorted(set(keys)),
        })
    for index, (region, names) in enumerate(sorted(aliases.items())):
        statements.append({
            "Sid": f"UseStateKeyAliases{index or ''}", "Effect": "Allow",
            "Action": KMS_ACTIONS,
            "Resource": f"arn:{partition(region)}:kms:{region}:*:key/*",
            "Condition": {"ForAnyValue:StringEquals": {
                "kms:ResourceAliases": sorted(set(names))}},
        })
    return statements


def policy_document(settings: Settings) -> dict[str, Any]:
    """The minimal policy for the Pulumi CLI on this backend."""
    bucket_arn = f"arn:{partition(settings.region)}:s3:::{settings.bucket}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ListStateBucket", "Effect": "Allow",
                "Action": "s3:ListBucket", "Resource": bucket_arn,
            },
            {
                "Sid": "ReadWriteState", "Effect": "Allow",
                "Action": ["s3:DeleteObject", "s3:GetObject",
                           "s3:PutObject"],
                "Resource": f"{bucket_arn}/{settings.state_root}*",
            },
            *kms_statements(settings),
        ],
    }


def policy_json(settings: Settings) -> str:
    return json.dumps(policy_document(settings), indent=2)


def canonical(document: Any) -> str:
    """A policy as text that ignores key order and one-item lists."""
    if isinstance(document, str):
        document = json.loads(document)

    def norm(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: norm(v, k) for k, v in value.items()}
        if isinstance(value, list):
            items = [norm(v) for v in value]
            if key in {"Action", "Resource"} or key.startswith(
                    ("kms:", "token.")):
                items = sorted(items, key=json.dumps)
            if len(items) == 1 and key != "Statement":
                return items[0]
            return items
        return value

    return json.dumps(norm(document), sort_keys=True)


# --- GitHub trust ---------------------------------------------------------


@dataclass(frozen=True)
class GithubTrust:
    """Which GitHub Actions runs may assume the deploy role.

    Known shortcoming: ``pull_requests`` lets previews use the same role,
    which can also write state; a separate read-only preview role (state
    GetObject/ListBucket only) is not made yet.
    """

    repo: str
    branch: str = "main"
    environment: str | None = None
    pull_requests: bool = False

    def check(self) -> None:
        if not _REPO_RE.match(self.repo):
            raise ConfigError(
                f"--github-repo '{self.repo}' is not owner/name",
                "pass the repository as it appears in its URL, e.g. "
                "acme/infra",
            )
        if not _BRANCH_RE.match(self.branch) or ".." in self.branch:
            raise ConfigError(
                f"--branch '{self.branch}' is not a plain branch name",
                "pass one branch, without wildcards (default main)",
            )
        if self.environment is not None and not _ENVIRONMENT_RE.match(
                self.environment):
            raise ConfigError(
                f"--environment '{self.environment}' is not a plain "
                "environment name",
                "use letters, digits, '.', '_' and '-' only",
            )

    def subjects(self) -> list[str]:
        """The OIDC ``sub`` values GitHub sends for the allowed runs.

        A job that names an environment gets the environment in ``sub``
        instead of the branch; the environment's own branch rules then
        decide which branches reach it.
        """
        base = f"repo:{self.repo}"
        subjects = [f"{base}:environment:{self.environment}"
                    if self.environment else
                    f"{base}:ref:refs/heads/{self.branch}"]
        if self.pull_requests:
            subjects.append(f"{base}:pull_request")
        return subjects


def trust_policy(provider_arn: str, trust: GithubTrust) -> dict[str, Any]:
    subjects = trust.subjects()
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "GithubActions", "Effect": "Allow",
            "Principal": {"Federated": provider_arn},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {
                f"{GITHUB_OIDC_HOST}:aud": GITHUB_AUDIENCE,
                f"{GITHUB_OIDC_HOST}:sub":
                    subjects[0] if len(subjects) == 1 else subjects,
            }},
        }],
    }


def check_role_name(name: str) -> None:
    if not _ROLE_RE.match(name):
        raise ConfigError(
            f"--role-name '{name}' is not a valid IAM role name",
            "use up to 64 letters, digits and +=,.@_- characters",
        )


# --- apply ----------------------------------------------------------------


def run(settings: Settings, *, trust: GithubTrust | None = None,
        role_name: str = DEFAULT_ROLE, dry_run: bool = False,
        report: Report | None = None) -> int:
    """Create or repair the policy, and the OIDC provider and role."""
    report = report or Report()
    if trust is not None:
        trust.check()
        check_role_name(role_name)
    iam = aws.client(settings, "iam", attempts=3)
    sts = aws.client(settings, "sts", attempts=3)
    with aws.translated(settings, "reading the AWS account"):
        account = sts.get_caller_identity()["Account"]
    arn_partition = partition(settings.region)
    policy_arn = (f"arn:{arn_partition}:iam::{account}:policy/"
                  f"{policy_name(settings)}")
    with aws.translated(settings, f"applying IAM policy "
                                  f"{policy_name(settings)}"):
        ensure_policy(iam, settings, policy_arn, report, dry_run)
    if trust is not None:
        with aws.translated(settings, "applying the GitHub OIDC provider"):
            provider_arn = ensure_github_provider(
                iam, f"arn:{arn_partition}:iam::{account}:oidc-provider/"
                     f"{GITHUB_OIDC_HOST}", report, dry_run)
        with aws.translated(settings, f"applying IAM role {role_name}"):
            ensure_role(iam, role_name, trust_policy(provider_arn, trust),
                        report, dry_run)
            ensure_attached(iam, role_name, policy_arn, report, dry_run)
    report.summary(f"IAM for s3://{settings.bucket}"
                   + (" [dry run]" if dry_run else ""))
    return 0


def _missing(exc: bx.ClientError) -> bool:
    return aws.error_code(exc) in {"NoSuchEntity", "NoSuchEntityException"}


def ensure_policy(iam: Any, settings: Settings, arn: str, report: Report,
                  dry_run: bool) -> None:
    name = policy_name(settings)
    subject = f"policy {name}"
    wanted = policy_document(settings)
    try:
        current = iam.get_policy(PolicyArn=arn)["Policy"]
    except bx.ClientError as exc:
        if not _missing(exc):
            raise
        if dry_run:
            report.step("would create", subject)
            return
        iam.create_policy(
            PolicyName=name, PolicyDocument=json.dumps(wanted),
            Description=f"Pulumi state in s3://{settings.bucket} "
                        f"({settings.state_root}), made by statekeeper")
        report.step("created", subject)
        return
    version = iam.get_policy_version(
        PolicyArn=arn, VersionId=current["DefaultVersionId"])
    if canonical(version["PolicyVersion"]["Document"]) == canonical(wanted):
        report.step("ok", subject)
        return
    if dry_run:
        report.step("would repair", subject, "document differs")
        return
    versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
    if len(versions) >= MAX_POLICY_VERSIONS:
        oldest = min((v for v in versions if not v["IsDefaultVersion"]),
                     key=lambda v: v["CreateDate"])
        iam.delete_policy_version(PolicyArn=arn,
                                  VersionId=oldest["VersionId"])
    iam.create_policy_version(PolicyArn=arn,
                              PolicyDocument=json.dumps(wanted),
                              SetAsDefault=True)
    report.step("repaired", subject, "new default version")


def ensure_github_provider(iam: Any, arn: str, report: Report,
                           dry_run: bool) -> str:
    subject = f"OIDC provider {GITHUB_OIDC_HOST}"
    try:
        current = iam.get_open_id_connect_provider(
            OpenIDConnectProviderArn=arn)
    except bx.ClientError as exc:
        if not _missing(exc):
            raise
        if dry_run:
            report.step("would create", subject)
            return arn
        # AWS no longer checks thumbprints for GitHub's issuer, so none
        # is pinned here.
        made = iam.create_open_id_connect_provider(
            Url=f"https://{GITHUB_OIDC_HOST}",
            ClientIDList=[GITHUB_AUDIENCE])
        report.step("created", subject)
        return made["OpenIDConnectProviderArn"]
    if GITHUB_AUDIENCE in current.get("ClientIDList", []):
        report.step("ok", subject)
    elif dry_run:
        report.step("would repair", subject, f"add audience "
                                             f"{GITHUB_AUDIENCE}")
    else:
        iam.add_client_id_to_open_id_connect_provider(
            OpenIDConnectProviderArn=arn, ClientID=GITHUB_AUDIENCE)
        report.step("repaired", subject, f"added audience "
                                         f"{GITHUB_AUDIENCE}")
    return arn


def ensure_role(iam: Any, name: str, trust: dict[str, Any],
                report: Report, dry_run: bool) -> None:
    subject = f"role {name}"
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except bx.ClientError as exc:
        if not _missing(exc):
            raise
        if dry_run:
            report.step("would create", subject)
            return
        iam.create_role(
            RoleName=name, AssumeRolePolicyDocument=json.dumps(trust),
            Description="Runs Pulumi from GitHub Actions (statekeeper)")
        report.step("created", subject)
        return
    if canonical(role["AssumeRolePolicyDocument"]) == canonical(trust):
        report.step("ok", subject)
    elif dry_run:
        report.step("would repair", subject, "trust policy differs")
    else:
        iam.update_assume_role_policy(RoleName=name,
                                      PolicyDocument=json.dumps(trust))
        report.step("repaired", subject, "trust policy replaced")


def ensure_attached(iam: Any, role: str, policy_arn: str, report: Report,
                    dry_run: bool) -> None:
    subject = f"policy attached to role {role}"
    try:
        attached = iam.list_attached_role_policies(
            RoleName=role)["AttachedPolicies"]
    except bx.ClientError as exc:
        if not (dry_run and _missing(exc)):
            raise
        attached = []
    if any(p["PolicyArn"] == policy_arn for p in attached):
        report.step("ok", subject)
    elif dry_run:
        report.step("would create", subject)
    else:
        iam.attach_role_policy(RoleName=role, PolicyArn=policy_arn)
        report.step("created", subject)
