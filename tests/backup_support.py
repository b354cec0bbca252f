"""Setup shared by the backup, restore, history and prune tests.

Real deploys of the ``yaml-app`` fixture with the real Pulumi CLI on the
moto server, a way to wipe a versioned bucket completely, filler objects
for tests that need many of them, and a small HTTP proxy that answers
``503 SlowDown`` before letting requests through to moto.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

BACKUP_BUCKET = "test-backups"
PROJECT = "yaml-app"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def make_bucket(s3, bucket: str) -> None:
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def pulumi_in(ws: Any, project: Path, *args: str):
    """The real CLI on the workspace's backend, from the project folder."""
    from statekeeper.pulumi_cli import Pulumi

    settings = ws.settings(PULUMI_PROJECT_DIR=str(project))
    return Pulumi(settings, cwd=project).run(*args)


def deploy(ws: Any, s3, project: Path, stack: str, greeting: str) -> None:
    """Create the stack if needed, set ``greeting`` and run pulumi up."""
    bucket = ws.env["STATE_BUCKET"]
    if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        make_bucket(s3, bucket)
    if not (project / f"Pulumi.{stack}.yaml").exists():
        pulumi_in(ws, project, "stack", "init", stack,
                  "--secrets-provider", "passphrase")
        pulumi_in(ws, project, "config", "set", "--secret", "apiToken",
                  f"token-of-{stack}", "--stack", stack)
    pulumi_in(ws, project, "config", "set", "greeting", greeting,
              "--stack", stack)
    pulumi_in(ws, project, "up", "--yes", "--skip-preview", "--stack",
              stack)


def new_project(tmp_path: Path) -> Path:
    """A copy of the fixture: stack init writes Pulumi.<stack>.yaml."""
    target = tmp_path / PROJECT
    shutil.copytree(FIXTURES / PROJECT, target)
    return target


def export(ws: Any, project: Path, stack: str) -> dict:
    """``pulumi stack export`` of ``stack``, parsed."""
    done = pulumi_in(ws, project, "stack", "export", "--stack", stack)
    return json.loads(done.stdout)


def wipe(s3, bucket: str) -> None:
    """Delete every version and delete marker: an empty bucket."""
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket)
    for page in pages:
        doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                  for v in page.get("Versions", []) +
                  page.get("DeleteMarkers", [])]
        if doomed:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed})
    assert not s3.list_objects_v2(Bucket=bucket).get("Contents")


def seed(s3, bucket: str, count: int, size: int = 3000,
         prefix: str = ".pulumi/history/filler/s") -> None:
    """``count`` filler objects under the state root."""
    from concurrent.futures import ThreadPoolExecutor

    def put(i: int) -> None:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{i:05d}.json",
                      Body=(f"{i:05d}".encode() * (size // 5 + 1))[:size])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(count)))


def backup_env(ws: Any, s3, dest: str | None = None) -> str:
    """Point BACKUP_DEST at a fresh backup bucket; return the URL."""
    if dest is None:
        s3.create_bucket(Bucket=BACKUP_BUCKET)
        dest = f"s3://{BACKUP_BUCKET}/nightly"
    ws.env["BACKUP_DEST"] = dest
    return dest


def snapshots(ws: Any) -> list[dict]:
    done = ws.inv("backup.list", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
