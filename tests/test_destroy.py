"""``inv destroy`` and ``inv stack.rm`` end to end with the real CLI: both
refuse without ``--yes`` and say what would be lost; ``stack.rm`` refuses
while resources remain unless forced.
"""

from __future__ import annotations

import pytest
from conftest import assert_clean_failure
from deploy_support import (
    PROJECT,
    checkpoint_key,
    copy_project,
    init_stack,
    keys_under,
    output_of,
    read_checkpoint,
)


@pytest.fixture
def deployed(ws, s3, pulumi_cli, tmp_path):
    folder = copy_project(tmp_path)
    init_stack(ws, s3, folder, api_token="initial-token")
    done = ws.inv("deploy", "--stack", "staging", "--project", str(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def resources(s3, ws) -> list[dict]:
    state = read_checkpoint(s3, ws.env["STATE_BUCKET"])
    return (state["checkpoint"].get("latest") or {}).get("resources") or []


def test_destroy_refuses_without_yes_and_lists_what_would_go(
        ws, s3, deployed):
    before = resources(s3, ws)
    done = ws.inv("destroy", "--stack", "staging", "--project",
                  str(deployed))
    assert_clean_failure(done, "not destroying stack 'staging'",
                         "2 resources", "--yes")
    assert done.returncode == 3
    assert "greetingNote (notes:index:Note)" in done.stdout
    assert "tokenNote (notes:index:Note)" in done.stdout
    assert resources(s3, ws) == before


def test_destroy_needs_the_stack_named(ws, s3, deployed):
    done = ws.inv("destroy", "--project", str(deployed), "--yes")
    assert_clean_failure(done, "destroy needs the stack named")
    assert resources(s3, ws)


def test_destroy_then_stack_rm_empties_and_removes_the_stack(
        ws, s3, deployed):
    bucket = ws.env["STATE_BUCKET"]
    refused = ws.inv("stack.rm", "--stack", "staging", "--project",
                     str(deployed), "--yes")
    assert_clean_failure(refused, "still has 2 resources", "inv destroy")
    assert refused.returncode == 3
    s3.head_object(Bucket=bucket, Key=checkpoint_key())

    destroyed = ws.inv("destroy", "--stack", "staging", "--project",
                       str(deployed), "--yes")
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert ("destroy staging: 0 created, 0 updated, 3 deleted, "
            "0 unchanged") in destroyed.stdout
    assert resources(s3, ws) == []

    unconfirmed = ws.inv("stack.rm", "--stack", "staging", "--project",
                         str(deployed))
    assert_clean_failure(unconfirmed, "not removing stack 'staging'",
                         "--yes")
    assert "history entries" in unconfirmed.stdout
    assert "Pulumi.staging.yaml" in unconfirmed.stdout
    s3.head_object(Bucket=bucket, Key=checkpoint_key())

    removed = ws.inv("stack.rm", "--stack", "staging", "--project",
                     str(deployed), "--yes")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "stack.rm staging: removed" in removed.stdout
    keys = keys_under(s3, bucket, ".pulumi/")
    assert checkpoint_key() not in keys
    assert not keys_under(s3, bucket, f".pulumi/history/{PROJECT}/staging/")
    assert not (deployed / "Pulumi.staging.yaml").exists()
    shown = output_of(refused, destroyed, unconfirmed, removed)
    assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in shown


def test_forced_stack_rm_forgets_resources_that_remain(ws, s3, deployed):
    done = ws.inv("stack.rm", "--stack", "staging", "--project",
                  str(deployed), "--yes", "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "orphaned" in done.stdout
    assert "2 resources forgotten" in done.stdout
    assert checkpoint_key() not in keys_under(
        s3, ws.env["STATE_BUCKET"], ".pulumi/")
