"""Bad input through the real ``inv`` command line: one line naming the
problem and the fix, a non-zero exit, no traceback, and nothing created or
changed, neither in the store nor in the workspace."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from conftest import FIXTURES, assert_clean_failure, free_port


@dataclass
class Case:
    env: dict[str, str | None]
    args: tuple[str, ...]
    needles: tuple[str, ...]
    env_file: str | None = None
    code: int = 2
    prepare: Callable | None = None


CASES = {
    "uppercase bucket name": Case(
        {"STATE_BUCKET": "My_State"}, ("bootstrap",),
        ("STATE_BUCKET 'My_State' is not a valid S3 bucket name",
         "choose a name like")),
    "bucket name too short": Case(
        {}, ("bootstrap", "--bucket", "ab"),
        ("'ab' is not a valid S3 bucket name", "3 to 63 characters")),
    "bucket name shaped like an IP address": Case(
        {"STATE_BUCKET": "192.168.10.1"}, ("bootstrap",),
        ("must not look like an IP address",)),
    "bucket name with a reserved prefix": Case(
        {"STATE_BUCKET": "xn--state"}, ("bootstrap",),
        ("uses a prefix AWS reserves",)),
    "malformed .env line": Case(
        {}, ("bootstrap",), (".env line 3 is not KEY=VALUE",
                             "fix or remove that line"),
        env_file="# settings\nAWS_REGION=us-east-1\nSTATE BUCKET=x\n"),
    "backend URL naming another bucket": Case(
        {"PULUMI_BACKEND_URL": "s3://someone-elses-state?region=us-east-1"},
        ("bootstrap",),
        ("names bucket 'someone-elses-state' but STATE_BUCKET is "
         "'test-pulumi-state'",)),
    "backend URL of another kind": Case(
        {"PULUMI_BACKEND_URL": "https://api.pulumi.com"}, ("doctor",),
        ("'https://api.pulumi.com' is not an s3:// URL",)),
    "unknown AWS region without a custom endpoint": Case(
        {"AWS_REGION": "us-middle-7", "AWS_ENDPOINT_URL": None},
        ("bootstrap",),
        ("AWS_REGION 'us-middle-7' is not an AWS region",
         "set AWS_ENDPOINT_URL for an S3-compatible store")),
    "malformed region": Case(
        {"AWS_REGION": "US_EAST"}, ("bootstrap",),
        ("AWS_REGION 'US_EAST' is not a region name",)),
    "endpoint without a scheme": Case(
        {"AWS_ENDPOINT_URL": "127.0.0.1:9000"}, ("bootstrap",),
        ("AWS_ENDPOINT_URL '127.0.0.1:9000' is not an http(s) URL",)),
    "endpoint not reachable": Case(
        {"AWS_ENDPOINT_URL": "UNREACHABLE"}, ("bootstrap",),
        ("cannot reach http://127.0.0.1:", "inv sandbox.up"), code=1),
    "no passphrase": Case(
        {"PULUMI_CONFIG_PASSPHRASE": None}, ("bootstrap",),
        ("no Pulumi passphrase", "PULUMI_CONFIG_PASSPHRASE_FILE")),
    "passphrase file missing": Case(
        {"PULUMI_CONFIG_PASSPHRASE": None,
         "PULUMI_CONFIG_PASSPHRASE_FILE": "/nonexistent/passphrase"},
        ("bootstrap",),
        ("PULUMI_CONFIG_PASSPHRASE_FILE /nonexistent/passphrase is not a "
         "readable file",)),
    "no AWS credentials": Case(
        {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None},
        ("bootstrap",), ("no AWS credentials found", "AWS_PROFILE"),
        code=1),
    "unknown AWS profile": Case(
        {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None,
         "AWS_PROFILE": "ci-deployer"}, ("bootstrap",),
        ("AWS profile 'ci-deployer' does not exist",), code=1),
    "stack name with spaces": Case(
        {}, ("bootstrap", "--stacks", "staging,my stack"),
        ("stack name 'my stack' is not valid",)),
    "retention days not a number": Case(
        {"STATE_NONCURRENT_DAYS": "ninety"}, ("bootstrap",),
        ("STATE_NONCURRENT_DAYS 'ninety' is not a whole number",)),
    "project without Pulumi.yaml": Case(
        {"PULUMI_PROJECT_DIR": "/tmp"}, ("bootstrap",),
        ("no Pulumi.yaml in /tmp", "--project")),
    "secrets provider of another kind": Case(
        {"PULUMI_SECRETS_PROVIDER": "hashivault://x"}, ("bootstrap",),
        ("PULUMI_SECRETS_PROVIDER 'hashivault://x' is not supported",)),
    "thread count that is not a number": Case(
        {}, ("backup", "--threads", "many"),
        ("--threads 'many' is not a whole number of at least 1",
         "leave --threads out for the default")),
    "wait that is not a number": Case(
        {}, ("backup", "--wait", "nan"),
        ("--wait 'nan' is not a number of at least 0",)),
    "negative keep count": Case(
        {}, ("prune", "--keep", "-3"),
        ("--keep '-3' is not a whole number of at least 0",)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_fails_cleanly_and_changes_nothing(ws, s3, tmp_path,
                                                     pulumi_cli, case):
    project = tmp_path / "yaml-app"
    shutil.copytree(FIXTURES / "yaml-app", project)
    ws.env["PULUMI_PROJECT_DIR"] = str(project)
    for key, value in case.env.items():
        if value is None:
            ws.env.pop(key, None)
        elif value == "UNREACHABLE":
            ws.env[key] = f"http://127.0.0.1:{free_port()}"
        else:
            ws.env[key] = value
    if case.env_file is not None:
        ws.write_env_file(case.env_file)
    files_before = sorted(p.name for p in project.iterdir())

    done = ws.inv(*case.args)

    line = assert_clean_failure(done, *case.needles)
    assert line.startswith("error: ")
    assert done.returncode == case.code
    assert s3.list_buckets()["Buckets"] == []
    assert sorted(p.name for p in project.iterdir()) == files_before
    passphrase = ws.env.get("PULUMI_CONFIG_PASSPHRASE")
    if passphrase:
        assert passphrase not in done.stdout + done.stderr


def test_malformed_env_never_echoes_the_line(ws):
    """A broken line may hold a secret: only its number is shown."""
    ws.write_env_file("PULUMI_CONFIG_PASSPHRASE 'hunter2-secret'\n")
    done = ws.inv("doctor")
    line = assert_clean_failure(done, "line 1")
    assert "hunter2" not in line
