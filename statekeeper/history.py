"""A stack's checkpoint history from S3 object versions, and rollback.

Every save of ``stacks/<project>/<stack>.json`` leaves the previous one as
a noncurrent version in a versioned bucket; this is the only history of
the state itself that the S3 backend keeps (``pulumi stack export
--version`` does not work there).  Rollback copies a chosen version over
the current object, so the replaced checkpoint becomes a version in turn
and the rollback can be undone the same way.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import botocore.exceptions as bx

from statekeeper import aws, checkpoint, stack_lock, stacks
from statekeeper.backup import human_bytes
from statekeeper.config import Settings
from statekeeper.errors import ConfigError, Refused
from statekeeper.output import Report
from statekeeper.project import name as project_name


def _project_name(settings: Settings) -> str | None:
    """The project directory's name, if it holds a project."""
    try:
        return project_name(settings.project_dir)
    except ConfigError:
        return None


def find_checkpoint(client: Any, settings: Settings,
                    stack: str) -> tuple[str, str, str]:
    """(project, stack, key) of the checkpoint of ``stack`` or
    ``project/stack``; fails naming the closest stacks."""
    want_project, _, name = stack.rpartition("/")
    found: dict[tuple[str, str], tuple[str, Any]] = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=settings.bucket,
                                   Prefix=f"{settings.state_root}stacks/"):
        for item in page.get("Contents", []):
            named = checkpoint.split_stack_key(settings.state_root,
                                               item["Key"])
            if not named:
                continue
            newest = found.get(named)
            if newest is None or item["LastModified"] > newest[1]:
                found[named] = (item["Key"], item["LastModified"])
    matches = [(p, s) for p, s in found if s == name
               and (not want_project or p == want_project)]
    if len(matches) > 1:
        own = _project_name(settings)
        matches = [m for m in matches if m[0] == own] or matches
    if not matches:
        raise ConfigError(*stacks.missing_stack_message(
            name, sorted({s for _, s in found})))
    if len(matches) > 1:
        raise ConfigError(
            f"stack '{name}' exists in several projects",
            "name it as PROJECT/STACK: " + ", ".join(
                f"{p}/{s}" for p, s in sorted(matches)))
    project, name = matches[0]
    return project, name, found[matches[0]][0]


def versions(client: Any, settings: Settings, key: str,
             limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The newest ``limit`` versions of ``key`` (delete markers too) and
    whether there are more."""
    rows: list[dict[str, Any]] = []
    paginator = client.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=settings.bucket, Prefix=key):
        merged = ([dict(v, deleted=False) for v in page.get("Versions", [])]
                  + [dict(m, deleted=True, Size=0)
                     for m in page.get("DeleteMarkers", [])])
        merged.sort(key=lambda v: v["LastModified"], reverse=True)
        for version in merged:
            if version["Key"] != key:
                continue
            if len(rows) == limit:
                return rows, True
            rows.append(version)
    return rows, False


def _describe_version(client: Any, settings: Settings, key: str,
                      version: dict[str, Any]) -> dict[str, Any]:
    row = {
        "version_id": version["VersionId"],
        "time": version["LastModified"].isoformat(),
        "size": int(version.get("Size", 0)),
        "current": bool(version.get("IsLatest")),
        "deleted": version["deleted"],
        "resources": None, "pending_operations": None,
    }
    if version["deleted"]:
        return row
    body = client.get_object(Bucket=settings.bucket, Key=key,
                             VersionId=version["VersionId"])["Body"].read()
    try:
        state = checkpoint.parse(body, key)
    except checkpoint.CorruptCheckpoint:
        row["resources"] = "unreadable"
        return row
    row["resources"] = len(state.resources)
    row["pending_operations"] = len(state.pending_operations)
    return row


def _pulumi_updates(settings: Settings, project: str, stack: str,
                    report: Report) -> list[dict[str, Any]]:
    from statekeeper.pulumi_cli import Pulumi

    with tempfile.TemporaryDirectory() as scratch:
        done = Pulumi(settings, cwd=Path(scratch)).run(
            "stack", "history", "--json", "--stack",
            f"organization/{project}/{stack}", check=False)
    if not done.ok:
        report.warn("pulumi stack history failed; showing the checkpoint "
                    "versions only")
        return []
    try:
        return json.loads(done.stdout or "[]") or []
    except ValueError:
        return []


def show(settings: Settings, stack: str, *, limit: int = 20,
         as_json: bool = False, report: Report | None = None) -> int:
    """Print the checkpoint versions, newest first, and Pulumi's updates."""
    report = report or Report()
    if limit < 1:
        raise ConfigError(f"--limit {limit} is not a positive number",
                          "pass --limit 20, for example")
    client = aws.client(settings, "s3")
    with aws.translated(settings, "reading the stack's history"):
        project, name, key = find_checkpoint(client, settings, stack)
        status = client.get_bucket_versioning(
            Bucket=settings.bucket).get("Status")
        found, more = versions(client, settings, key, limit)
        rows = [_describe_version(client, settings, key, v) for v in found]
    updates = _pulumi_updates(settings, project, name, report)
    if status != "Enabled":
        report.warn(f"versioning is not enabled on {settings.bucket}: "
                    "older checkpoints are not kept (inv bootstrap turns it "
                    "on)")
    if as_json:
        report.line(json.dumps({"project": project, "stack": name,
                                "key": key, "versions": rows,
                                "more": more, "updates": updates},
                               indent=2))
        return 0
    report.line(f"checkpoint versions of {project}/{name} "
                f"(s3://{settings.bucket}/{key}), newest first:")
    for row in rows:
        tag = (" current" if row["current"] else "") + (
            " delete-marker" if row["deleted"] else "")
        pending = (f", {row['pending_operations']} pending"
                   if row["pending_operations"] else "")
        report.line(f"  {row['version_id']:<34} {row['time']:<32} "
                    f"{human_bytes(row['size']):>9} "
                    f"{row['resources']!s:>4} resources{pending}{tag}")
    report.line(f"updates Pulumi recorded for {name}, newest first:")
    for update in updates:
        changes = ", ".join(f"{k} {v}" for k, v in sorted(
            (update.get("resourceChanges") or {}).items()))
        report.line(f"  {update.get('startTime', '?'):<26} "
                    f"{update.get('kind', '?'):<8} "
                    f"{update.get('result', '?'):<10} {changes}")
    tail = f" (more with --limit {limit * 2})" if more else ""
    report.line(f"{len(rows)} checkpoint version(s){tail}, "
                f"{len(updates)} update(s)")
    return 0


def rollback(settings: Settings, stack: str, version: str,
             report: Report | None = None) -> int:
    """Make ``version`` of the stack's checkpoint the current one."""
    from statekeeper.restore import check_export

    report = report or Report()
    client = aws.client(settings, "s3")
    with aws.translated(settings, "rolling back the checkpoint"):
        project, name, key = find_checkpoint(client, settings, stack)
        try:
            chosen = client.get_object(Bucket=settings.bucket, Key=key,
                                       VersionId=version)
        except bx.ClientError as exc:
            if aws.error_code(exc) in {"NoSuchVersion", "NoSuchKey", "404",
                                       "InvalidArgument", "400"}:
                raise ConfigError(
                    f"version '{version}' of {key} does not exist",
                    f"'inv state.history --stack {stack}' lists the "
                    "versions") from None
            raise
        body = chosen["Body"].read()
        state = checkpoint.parse(body, f"version {version} of {key}")
        if state.stack and state.stack.rsplit("/", 1)[-1] != name:
            raise Refused(
                f"version {version} holds stack '{state.stack}', not "
                f"'{name}'", "pick a version from 'inv state.history'")
        current = client.head_object(Bucket=settings.bucket, Key=key)
        if current.get("VersionId") == version:
            report.line(f"{project}/{name} is already at version {version}"
                        "; nothing changed")
            return 0
        if state.pending_operations:
            report.warn(
                f"version {version} has {len(state.pending_operations)} "
                "pending operation(s) from an interrupted update: "
                + "; ".join(state.pending_summary()[:3])
                + " (check those resources after the rollback)")
        with stack_lock.held(client, settings.bucket, settings.state_root,
                             project, name):
            done = client.copy_object(
                Bucket=settings.bucket, Key=key,
                CopySource={"Bucket": settings.bucket, "Key": key,
                            "VersionId": version})
    check_export(settings, project, name, report, warn_pending=False)
    replaced = current.get("VersionId")
    undo = (f"; undo with 'inv state.rollback --stack {stack} --to "
            f"{replaced}'" if replaced and replaced != "null" else "")
    report.line(
        f"rolled back {project}/{name} to version {version} "
        f"({len(state.resources)} resources, written "
        f"{chosen['LastModified'].isoformat()}); new current version "
        f"{done.get('VersionId', '?')}{undo}")
    return 0
