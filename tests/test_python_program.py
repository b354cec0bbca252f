"""A Python program deployed end to end: the real CLI and Python language
host, the real `inv` tasks, the moto-backed S3 backend."""

from __future__ import annotations

import json
import shutil

from conftest import FIXTURES

BUCKET = "test-pulumi-state"


def test_python_program_deploys_and_redeploys_with_no_changes(
        ws, s3, tmp_path, pulumi_cli):
    project = tmp_path / "py-app"
    shutil.copytree(FIXTURES / "py-app", project)
    ws.env["PULUMI_PROJECT_DIR"] = str(project)
    assert ws.inv("bootstrap").returncode == 0
    secret = ws.inv("config.secret", "--stack", "staging", "apiToken",
                    input="py-token-4711\n")
    assert secret.returncode == 0, secret.stderr

    first = ws.inv("deploy", "--stack", "staging")
    second = ws.inv("deploy", "--stack", "staging")

    assert first.returncode == 0, first.stdout + first.stderr
    assert "deploy staging: 2 created" in first.stdout
    assert second.returncode == 0, second.stderr
    assert "0 created, 0 updated, 0 deleted, 2 unchanged" in second.stdout
    key = ".pulumi/stacks/py-app/staging.json"
    state = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    resources = json.loads(state)["checkpoint"]["latest"]["resources"]
    assert [r["type"] for r in resources] == [
        "pulumi:pulumi:Stack", "fixture:index:Note"]
    assert b"py-token-4711" not in state
    outputs = ws.pulumi("stack", "output", "--json", "--show-secrets",
                        "--stack", "staging", cwd=project)
    assert json.loads(outputs.stdout) == {"greeting": "hello",
                                          "token": "py-token-4711"}
    for done in (first, second, secret):
        assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in (
            done.stdout + done.stderr)
        assert "py-token-4711" not in done.stdout + done.stderr
