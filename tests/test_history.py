"""``inv state.history`` and ``inv state.rollback`` end to end: real deploys
of the ``yaml-app`` fixture, S3 object versions on the moto server, and
``pulumi stack export`` as the judge of what the current state is.
"""

from __future__ import annotations

import json

import pytest
from backup_support import PROJECT, deploy, export, new_project
from conftest import assert_clean_failure

KEY = f".pulumi/stacks/{PROJECT}/staging.json"


@pytest.fixture
def twice(ws, s3, pulumi_cli, tmp_path):
    """Two deploys of staging; the checkpoint version and export of each."""
    project = new_project(tmp_path)
    bucket = ws.env["STATE_BUCKET"]
    states = []
    for greeting in ("first", "second"):
        deploy(ws, s3, project, "staging", greeting)
        version = s3.head_object(Bucket=bucket, Key=KEY)["VersionId"]
        states.append((version, export(ws, project, "staging")))
    return project, states


def outputs(state: dict) -> dict:
    stack = state["deployment"]["resources"][0]
    return stack.get("outputs", {})


def test_history_lists_versions_newest_first_and_pulumi_updates(
        ws, twice):
    _, [(first, _), (second, _)] = twice
    done = ws.inv("state.history", "--stack", "staging", "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    ids = [v["version_id"] for v in shown["versions"]]
    assert ids[0] == second and first in ids
    assert ids.index(first) > ids.index(second)
    assert shown["versions"][0]["current"] is True
    assert all(isinstance(v["resources"], int) for v in shown["versions"])
    assert all(v["size"] > 0 for v in shown["versions"])
    times = [v["time"] for v in shown["versions"]]
    assert times == sorted(times, reverse=True)
    assert [u["kind"] for u in shown["updates"]] == ["update", "update"]

    table = ws.inv("state.history", "--stack", "staging", "--limit", "1")
    assert table.returncode == 0, table.stderr
    assert second in table.stdout and first not in table.stdout
    assert "1 checkpoint version(s) (more with --limit 2)" in table.stdout
    assert "2 update(s)" in table.stdout


def test_rollback_round_trip(ws, s3, twice):
    project, [(first, export1), (second, export2)] = twice
    assert outputs(export1)["greeting"] == "first"

    back = ws.inv("state.rollback", "--stack", "staging", "--to", first)
    assert back.returncode == 0, back.stdout + back.stderr
    assert export(ws, project, "staging") == export1
    assert f"--to {second}" in back.stdout   # how to undo it
    assert ws.env["PULUMI_CONFIG_PASSPHRASE"] not in back.stdout + \
        back.stderr
    assert not s3.list_objects_v2(
        Bucket=ws.env["STATE_BUCKET"], Prefix=".pulumi/locks/").get(
            "Contents")

    forward = ws.inv("state.rollback", "--stack", "staging", "--to", second)
    assert forward.returncode == 0, forward.stdout + forward.stderr
    assert export(ws, project, "staging") == export2

    same = ws.inv("state.rollback", "--stack", "staging", "--to",
                  s3.head_object(Bucket=ws.env["STATE_BUCKET"],
                                 Key=KEY)["VersionId"])
    assert same.returncode == 0 and "nothing changed" in same.stdout


def test_rollback_refuses_a_version_that_is_not_a_checkpoint(
        ws, s3, twice):
    project, [_, (second, export2)] = twice
    bucket = ws.env["STATE_BUCKET"]
    broken = s3.put_object(Bucket=bucket, Key=KEY,
                           Body=b"{not json")["VersionId"]
    s3.copy_object(Bucket=bucket, Key=KEY, CopySource={
        "Bucket": bucket, "Key": KEY, "VersionId": second})
    done = ws.inv("state.rollback", "--stack", "staging", "--to", broken)
    assert_clean_failure(done, "not valid JSON")
    assert export(ws, project, "staging") == export2

    unknown = ws.inv("state.rollback", "--stack", "staging", "--to",
                     "no-such-version")
    assert_clean_failure(unknown, "does not exist", "inv state.history")
    mistyped = ws.inv("state.history", "--stack", "stagign")
    assert_clean_failure(mistyped, "stack 'stagign' does not exist",
                         "staging")


def test_rollback_warns_about_pending_operations(ws, s3, twice):
    project, [_, (second, _)] = twice
    bucket = ws.env["STATE_BUCKET"]
    state = json.loads(s3.get_object(Bucket=bucket, Key=KEY)["Body"].read())
    urn = state["checkpoint"]["latest"]["resources"][0]["urn"]
    state["checkpoint"]["latest"]["pending_operations"] = [
        {"type": "creating", "resource": {"urn": urn}}]
    halfway = s3.put_object(Bucket=bucket, Key=KEY,
                            Body=json.dumps(state).encode())["VersionId"]
    s3.copy_object(Bucket=bucket, Key=KEY, CopySource={
        "Bucket": bucket, "Key": KEY, "VersionId": second})

    done = ws.inv("state.rollback", "--stack", "staging", "--to", halfway)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 pending operation(s)" in done.stderr and urn in done.stderr
