"""The local AWS emulator task pair, and every task following it."""

from __future__ import annotations

import shutil

import boto3
from conftest import FIXTURES


def test_sandbox_up_down_and_tasks_follow_it(workspace, tmp_path,
                                             pulumi_cli):
    project = tmp_path / "yaml-app"
    shutil.copytree(FIXTURES / "yaml-app", project)
    env = dict(workspace.env, PULUMI_PROJECT_DIR=str(project))
    env["STATEKEEPER_SANDBOX_DIR"] = str(tmp_path / "sandbox")
    try:
        up = workspace.inv("sandbox.up", "--port", "0", env=env)
        assert up.returncode == 0, up.stderr
        endpoint = up.stdout.split(" at ")[1].split(";")[0]
        assert endpoint.startswith("http://127.0.0.1:")
        again = workspace.inv("sandbox.up", env=env)
        assert f"already running at {endpoint}" in again.stdout
        assert workspace.inv("sandbox.status", env=env).returncode == 0

        # No endpoint, keys or passphrase configured: the sandbox supplies
        # them, and the passphrase file it made is private.
        done = workspace.inv("bootstrap", env=env)
        assert done.returncode == 0, done.stderr
        assert endpoint in done.stdout
        s3 = boto3.client("s3", endpoint_url=endpoint,
                          region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
        names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
        assert names == ["rocketseat-pulumi-state"]
        passphrase = tmp_path / "sandbox" / "passphrase"
        assert passphrase.stat().st_mode & 0o077 == 0
        assert passphrase.read_text() not in done.stdout + done.stderr
    finally:
        down = workspace.inv("sandbox.down", env=env)
    assert down.stdout.strip() == "sandbox stopped"
    assert workspace.inv("sandbox.down", env=env).stdout.strip() == (
        "sandbox was not running")
    status = workspace.inv("sandbox.status", env=env)
    assert status.returncode == 1
    assert "not running" in status.stdout
