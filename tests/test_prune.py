"""``inv prune`` end to end: the files the real Pulumi CLI leaves in
``backups/`` and ``history/`` after several updates, trimmed per stack.
"""

from __future__ import annotations

import json

import pytest
from backup_support import PROJECT, deploy, export, new_project, pulumi_in
from conftest import assert_clean_failure


def keys(s3, bucket: str, prefix: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


@pytest.fixture
def updated(ws, s3, pulumi_cli, tmp_path):
    """staging deployed three times, prod once."""
    project = new_project(tmp_path)
    for greeting in ("one", "two", "three"):
        deploy(ws, s3, project, "staging", greeting)
    deploy(ws, s3, project, "prod", "only")
    return project


def test_prune_keeps_the_last_updates_per_stack(ws, s3, updated):
    bucket = ws.env["STATE_BUCKET"]
    backups = f".pulumi/backups/{PROJECT}/staging/"
    history = f".pulumi/history/{PROJECT}/staging/"
    before_backups = keys(s3, bucket, backups)
    before_history = keys(s3, bucket, history)
    assert len(before_backups) == 3 and len(before_history) == 6
    state = export(ws, updated, "staging")

    dry = ws.inv("prune", "--keep", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 6 files" in dry.stdout
    assert keys(s3, bucket, backups) == before_backups

    done = ws.inv("prune", "--keep", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "deleted 6 files in 2 stack folder(s)" in done.stdout
    assert "KB reclaimed" in done.stdout
    assert "STATE_NONCURRENT_DAYS" in done.stdout
    assert keys(s3, bucket, backups) == before_backups[-1:]
    assert keys(s3, bucket, history) == before_history[-2:]
    # prod had one update: untouched.  The state itself is unchanged, and
    # Pulumi still reads the history that is left.
    assert len(keys(s3, bucket, f".pulumi/history/{PROJECT}/prod/")) == 2
    assert export(ws, updated, "staging") == state
    left = json.loads(pulumi_in(ws, updated, "stack", "history", "--json",
                                "--stack", "staging").stdout)
    assert len(left) == 1

    again = ws.inv("prune", "--keep", "1")
    assert "deleted 0 files" in again.stdout


def test_prune_rejects_keep_zero(ws):
    assert_clean_failure(ws.inv("prune", "--keep", "0"),
                         "would delete every update")
