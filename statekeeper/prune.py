"""Keep the backend's ``backups/`` and ``history/`` from growing forever.

The Pulumi CLI adds a copy of the checkpoint to ``backups/`` and a pair of
files to ``history/`` on every update.  They are current objects, so no
noncurrent-version lifecycle rule ever expires them.  This keeps the last
N updates per stack in each area and deletes the rest.  A file name
carries the update's time in Unix nanoseconds (``dev.1700000000000000000
.json``, ``dev-1700000000000000000.history.json``); files of one update
go together, and a file with no such time is never touched.

In a versioned bucket a delete leaves a noncurrent version, so the bytes
are freed when the bucket's lifecycle rule expires it
(``STATE_NONCURRENT_DAYS``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from statekeeper import aws
from statekeeper.backup import human_bytes
from statekeeper.config import Settings
from statekeeper.errors import AwsError, ConfigError
from statekeeper.output import Report

AREAS = ("backups", "history")
_UPDATE_TIME = re.compile(r"(\d{16,})")


def _groups(client: Any, settings: Settings, area: str
            ) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """(project, stack, objects) per stack folder of ``area``, streamed:
    the listing is in key order, so a stack's objects come together."""
    prefix = f"{settings.state_root}{area}/"
    paginator = client.get_paginator("list_objects_v2")
    current: tuple[str, str] | None = None
    batch: list[dict[str, Any]] = []
    for page in paginator.paginate(Bucket=settings.bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            parts = item["Key"][len(prefix):].split("/")
            if len(parts) != 3:
                continue
            owner = (parts[0], parts[1])
            if owner != current:
                if current and batch:
                    yield current[0], current[1], batch
                current, batch = owner, []
            batch.append(item)
    if current and batch:
        yield current[0], current[1], batch


def doomed(objects: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    """The objects of all but the newest ``keep`` updates."""
    by_time: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for item in objects:
        name = item["Key"].rsplit("/", 1)[-1]
        found = _UPDATE_TIME.findall(name)
        if found:
            by_time[int(found[-1])].append(item)
    old = sorted(by_time)[:-keep] if len(by_time) > keep else []
    return [item for when in old for item in by_time[when]]


def _delete(client: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        done = client.delete_objects(
            Bucket=bucket, Delete={"Objects": [
                {"Key": k} for k in keys[start:start + 1000]],
                "Quiet": True})
        errors = done.get("Errors") or []
        if errors:
            raise AwsError(
                f"could not delete {len(errors)} object(s), e.g. "
                f"{errors[0].get('Key')}: {errors[0].get('Code')}",
                "check the credentials may delete in the state bucket")


def run(settings: Settings, *, keep: int = 20, stack: str | None = None,
        dry_run: bool = False, report: Report | None = None) -> int:
    """Delete all but the last ``keep`` updates' files per stack."""
    report = report or Report()
    if keep < 1:
        raise ConfigError(f"--keep {keep} would delete every update",
                          "pass --keep 1 or more")
    client = aws.client(settings, "s3", pool=10, attempts=10)
    files = freed = touched = 0
    verb = "would prune" if dry_run else "pruned"
    with aws.translated(settings, "pruning backups/ and history/"):
        client.head_bucket(Bucket=settings.bucket)
        versioned = client.get_bucket_versioning(
            Bucket=settings.bucket).get("Status") == "Enabled"
        for area in AREAS:
            for project, name, objects in _groups(client, settings, area):
                if stack and name != stack:
                    continue
                old = doomed(objects, keep)
                if not old:
                    continue
                size = sum(int(o.get("Size", 0)) for o in old)
                if not dry_run:
                    _delete(client, settings.bucket, [o["Key"] for o in old])
                files += len(old)
                freed += size
                touched += 1
                report.step(verb, f"{area}/{project}/{name}",
                            f"{len(old)} files, {human_bytes(size)}")
    later = (" once their noncurrent versions expire (STATE_NONCURRENT_DAYS"
             f"={settings.noncurrent_days})" if versioned and files else "")
    report.line(
        f"prune: {'would delete' if dry_run else 'deleted'} {files} files "
        f"in {touched} stack folder(s), {human_bytes(freed)} reclaimed"
        f"{later}; kept the last {keep} updates per stack")
    return 0
