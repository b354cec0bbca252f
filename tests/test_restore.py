"""``inv restore`` end to end: real deploys of the ``yaml-app`` fixture with
the real Pulumi CLI, backups to a moto bucket, and ``pulumi stack export``
compared before and after.
"""

from __future__ import annotations

import json
import re

import pytest
from backup_support import (
    backup_env,
    deploy,
    export,
    make_bucket,
    new_project,
    snapshots,
    wipe,
)
from conftest import assert_clean_failure

STACKS = ("staging", "prod")


@pytest.fixture
def deployed(ws, s3, pulumi_cli, tmp_path):
    """Two deployed stacks and a backup destination."""
    project = new_project(tmp_path)
    for stack in STACKS:
        deploy(ws, s3, project, stack, f"hello {stack}")
    backup_env(ws, s3)
    return project


def backup(ws) -> str:
    done = ws.inv("backup")
    assert done.returncode == 0, done.stdout + done.stderr
    return re.search(r"^backup (\S+):", done.stdout, re.MULTILINE).group(1)


def test_restore_into_a_wiped_bucket_reproduces_every_stack(
        ws, s3, deployed):
    before = {stack: export(ws, deployed, stack) for stack in STACKS}
    snap = backup(ws)
    wipe(s3, ws.env["STATE_BUCKET"])

    done = ws.inv("restore", snap)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "yaml-app/prod, yaml-app/staging read back" in done.stdout
    assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in done.stdout + \
        done.stderr
    for stack in STACKS:
        assert export(ws, deployed, stack) == before[stack]
    # No lock is left behind, and Pulumi can deploy on the restored state.
    assert not s3.list_objects_v2(Bucket=ws.env["STATE_BUCKET"],
                                  Prefix=".pulumi/locks/").get("Contents")
    deploy(ws, s3, deployed, "staging", "after restore")

    again = ws.inv("restore", snap, "--stack", "prod")
    assert again.returncode == 0, again.stderr
    assert "0 objects written" in again.stdout


def test_stack_restore_refuses_newer_state_and_leaves_others_alone(
        ws, s3, deployed):
    at_backup = export(ws, deployed, "staging")
    snap = backup(ws)
    for stack in STACKS:
        deploy(ws, s3, deployed, stack, f"changed {stack}")
    prod_now = export(ws, deployed, "prod")
    staging_now = export(ws, deployed, "staging")
    assert staging_now != at_backup

    refused = ws.inv("restore", snap, "--stack", "staging")
    assert_clean_failure(refused, "changed after snapshot", "--force")
    assert export(ws, deployed, "staging") == staging_now

    forced = ws.inv("restore", snap, "--stack", "staging", "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert export(ws, deployed, "staging") == at_backup
    assert export(ws, deployed, "prod") == prod_now


def test_restore_into_another_bucket(ws, s3, deployed):
    before = export(ws, deployed, "prod")
    snap = backup(ws)
    make_bucket(s3, "other-state")
    done = ws.inv("restore", "latest", "--stack", "prod", "--bucket",
                  "other-state")
    assert done.returncode == 0, done.stdout + done.stderr
    assert snap in done.stdout
    ws.env["STATE_BUCKET"] = "other-state"
    assert export(ws, deployed, "prod") == before
    listed = s3.list_objects_v2(Bucket="other-state",
                                Prefix=".pulumi/stacks/")
    assert [i["Key"] for i in listed["Contents"]] == [
        ".pulumi/stacks/yaml-app/prod.json",
        ".pulumi/stacks/yaml-app/prod.json.bak"]


def test_restore_refuses_while_a_deploy_holds_the_lock(ws, s3, deployed):
    snap = backup(ws)
    wipe(s3, ws.env["STATE_BUCKET"])
    s3.put_object(
        Bucket=ws.env["STATE_BUCKET"],
        Key=".pulumi/locks/organization/yaml-app/staging/abc.json",
        Body=b'{"pid": 99, "username": "ci", "hostname": "runner-7"}')
    done = ws.inv("restore", snap)
    assert_clean_failure(done, "locked by pid 99", "runner-7")


def test_restore_names_a_mistyped_stack_and_snapshot(ws, s3, deployed):
    snap = backup(ws)
    assert_clean_failure(ws.inv("restore", snap, "--stack", "stg"),
                         "stack 'stg' does not exist", "staging")
    assert_clean_failure(ws.inv("restore", "20200101T000000Z-0000"),
                         "is not at")
    assert [r["complete"] for r in snapshots(ws)] == [True]


def test_backup_keeps_stack_exports_with_secrets_encrypted(
        ws, s3, deployed):
    done = ws.inv("backup", "--exports")
    assert done.returncode == 0, done.stdout + done.stderr
    snap = re.search(r"^backup (\S+):", done.stdout, re.MULTILINE).group(1)
    for stack in STACKS:
        body = s3.get_object(
            Bucket="test-backups",
            Key=f"nightly/data/{snap}/@exports/yaml-app/{stack}.json",
        )["Body"].read().decode()
        assert json.loads(body) == export(ws, deployed, stack)
        assert f"token-of-{stack}" not in body and "ciphertext" in body
    assert ws.inv("backup.verify", snap).returncode == 0


def test_restore_from_a_local_directory(ws, s3, deployed, tmp_path):
    before = export(ws, deployed, "staging")
    folder = tmp_path / "local-backups"
    done = ws.inv("backup", "--to", str(folder))
    assert done.returncode == 0, done.stderr
    wipe(s3, ws.env["STATE_BUCKET"])
    restored = ws.inv("restore", "latest", "--source", str(folder),
                      "--stack", "staging")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert export(ws, deployed, "staging") == before
    # meta.yaml comes along so the empty bucket is a working backend.
    assert s3.head_object(Bucket=ws.env["STATE_BUCKET"],
                          Key=".pulumi/meta.yaml")
