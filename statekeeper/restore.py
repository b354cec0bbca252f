"""Restore a backup snapshot into the state bucket, and prove Pulumi reads
it.

The whole backend or one stack is written back from the snapshot's
manifest (each object from the snapshot that holds its bytes), checking
every object's SHA-256 on the way.  Before anything is written, a
checkpoint in the target that changed after the snapshot took it is
"newer state" and stops the restore unless ``--force``; with a versioned
bucket the overwritten state stays as an older version either way.  Each
restored stack's lock is held while its objects are written, and
``pulumi stack export`` must read every restored stack afterwards.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

from statekeeper import aws, checkpoint, config, stack_lock, stacks
from statekeeper.backup import choose_snapshot, human_bytes
from statekeeper.backup_store import (
    Destination,
    Entry,
    etag,
    open_destination,
)
from statekeeper.config import Settings
from statekeeper.errors import AwsError, ConfigError, Refused
from statekeeper.output import Report

_STACK_FILE_SUFFIXES = (".json.bak", ".json.gz.bak", ".json.zst.bak",
                        ".json", ".json.gz", ".json.zst", ".pulumi-tags")


def stack_of(key: str) -> tuple[str, str] | None:
    """(project, stack) a backend key belongs to, relative to the root."""
    parts = key.split("/")
    if parts[0] in ("history", "backups") and len(parts) >= 4:
        return parts[1], parts[2]
    if parts[0] == "stacks" and len(parts) == 3:
        for suffix in _STACK_FILE_SUFFIXES:
            if parts[2].endswith(suffix):
                return parts[1], parts[2][: -len(suffix)]
    return None


def is_checkpoint(key: str) -> bool:
    return checkpoint.split_stack_key("", key) is not None


def retarget(settings: Settings, bucket: str) -> Settings:
    """The same settings pointed at another state bucket."""
    config.check_bucket_name(bucket, "--bucket")
    url = config.build_backend_url(bucket, settings.prefix, settings.region,
                                   settings.endpoint_url)
    return dataclasses.replace(settings, bucket=bucket, backend_url=url)


class _Listing:
    """The target's current objects, read in key order beside the
    manifest."""

    def __init__(self, client: Any, settings: Settings) -> None:
        self._root = settings.state_root
        paginator = client.get_paginator("list_objects_v2")
        self._items: Iterator[dict[str, Any]] = (
            item for page in paginator.paginate(Bucket=settings.bucket,
                                                Prefix=self._root)
            for item in page.get("Contents", []))
        self._head: dict[str, Any] | None = next(self._items, None)

    def find(self, key: str) -> dict[str, Any] | None:
        full = self._root + key
        while self._head is not None and self._head["Key"] < full:
            self._head = next(self._items, None)
        if self._head is not None and self._head["Key"] == full:
            return self._head
        return None


def _parse_stack(stack: str | None) -> tuple[str | None, str | None]:
    if not stack:
        return None, None
    project, _, name = stack.rpartition("/")
    for part, what in ((name, "stack"), (project, "project")):
        if part and not all(ch.isalnum() or ch in "-_." for ch in part):
            raise ConfigError(f"--stack '{stack}' has an invalid {what} "
                              "name", "use STACK or PROJECT/STACK")
    return project or None, name


def run(settings: Settings, snapshot: str, *, stack: str | None = None,
        source: str | None = None, bucket: str | None = None,
        force: bool = False, report: Report | None = None) -> int:
    """Restore ``snapshot`` (or one stack of it); 0 when Pulumi reads it."""
    report = report or Report()
    target = retarget(settings, bucket) if bucket else settings
    want_project, want_stack = _parse_stack(stack)
    client = aws.client(settings, "s3", pool=20, attempts=10, bulk=True)
    destination = open_destination(settings, source, client)
    with aws.translated(target, "restoring a backup"):
        chosen = choose_snapshot(destination, snapshot)
        client.head_bucket(Bucket=target.bucket)
        writes, same, restored, conflicts = _plan(
            client, target, destination, chosen, want_project, want_stack)
        if conflicts and not force:
            key, when = conflicts[0]
            raise Refused(
                f"{len(conflicts)} checkpoint(s) changed after snapshot "
                f"{chosen} took them (e.g. {key}, written {when})",
                "pass --force to overwrite them (a versioned bucket keeps "
                "the current state as an older version)")
        with ExitStack() as locks:
            for project, name in sorted(restored):
                locks.enter_context(stack_lock.held(
                    client, target.bucket, target.state_root, project,
                    name))
            written_bytes = _write(client, target, destination, writes,
                                   report)
    for project, name in sorted(restored):
        check_export(target, project, name, report)
    report.progress("")
    names = ", ".join(f"{p}/{s}" for p, s in sorted(restored)) or "none"
    report.line(
        f"restore {chosen}: {len(writes)} objects written "
        f"({human_bytes(written_bytes)}), {same} already identical; "
        f"stacks {names} read back by pulumi stack export -> "
        f"s3://{target.bucket}/{target.state_root}")
    return 0


def _plan(client: Any, target: Settings, destination: Destination,
          chosen: str, want_project: str | None, want_stack: str | None,
          ) -> tuple[list[Entry], int, set[tuple[str, str]],
                     list[tuple[str, str]]]:
    """What to write, how many are already identical, which stacks, and
    which target checkpoints are newer than the snapshot."""
    listing = _Listing(client, target)
    writes: list[Entry] = []
    restored: set[tuple[str, str]] = set()
    seen: set[tuple[str, str]] = set()
    conflicts: list[tuple[str, str]] = []
    meta: Entry | None = None
    same = 0
    for entry in destination.entries(chosen):
        owner = stack_of(entry.key)
        if owner and is_checkpoint(entry.key):
            seen.add(owner)
        if entry.key == "meta.yaml":
            meta = entry
        if want_stack is not None and (
                owner is None or owner[1] != want_stack
                or (want_project and owner[0] != want_project)):
            continue
        current = listing.find(entry.key)
        if (current is not None and int(current["Size"]) == entry.size
                and etag(current["ETag"]) == etag(entry.etag)):
            same += 1
            if owner and is_checkpoint(entry.key):
                restored.add(owner)
            continue
        if owner and is_checkpoint(entry.key):
            restored.add(owner)
            if current is not None and _newer(current, entry):
                conflicts.append(
                    (entry.key, current["LastModified"].isoformat()))
        writes.append(entry)
    if want_stack is not None:
        matches = {o for o in seen if o[1] == want_stack
                   and (not want_project or o[0] == want_project)}
        if not matches:
            problem, fix = stacks.missing_stack_message(
                want_stack, sorted({s for _, s in seen}))
            raise ConfigError(f"{problem} in snapshot {chosen}", fix)
        if len(matches) > 1:
            raise ConfigError(
                f"stack '{want_stack}' exists in several projects of "
                f"snapshot {chosen}",
                "name it as PROJECT/STACK: " + ", ".join(
                    f"{p}/{s}" for p, s in sorted(matches)))
        if meta is not None and listing_lacks(client, target, "meta.yaml"):
            writes.insert(0, meta)
    return writes, same, restored, conflicts


def listing_lacks(client: Any, target: Settings, key: str) -> bool:
    found = client.list_objects_v2(Bucket=target.bucket,
                                   Prefix=target.state_root + key,
                                   MaxKeys=1)
    return not found.get("Contents")


def _newer(current: dict[str, Any], entry: Entry) -> bool:
    try:
        taken = datetime.fromisoformat(entry.modified)
    except ValueError:
        return True
    return current["LastModified"] > taken


def _write(client: Any, target: Settings, destination: Destination,
           writes: list[Entry], report: Report) -> int:
    """Write the objects, checkpoints last; check each SHA-256."""
    first = [e for e in writes if not is_checkpoint(e.key)]
    last = [e for e in writes if is_checkpoint(e.key)]

    def put(entry: Entry) -> int:
        digest = destination.copy_out(
            client, destination.data_path(entry.at, entry.key),
            target.bucket, target.state_root + entry.key)
        if digest != entry.sha256:
            raise AwsError(
                f"restored {entry.key} does not match the snapshot's "
                "SHA-256", "run 'inv backup.verify' on the snapshot and "
                "restore from another one")
        return entry.size

    total = 0
    with ThreadPoolExecutor(max_workers=16) as pool:
        for batch in (first, last):
            for done, size in enumerate(pool.map(put, batch), 1):
                total += size
                report.progress(f"{done}/{len(batch)} objects written")
    return total


def check_export(target: Settings, project: str, stack: str,
                 report: Report, *, warn_pending: bool = True) -> None:
    """``pulumi stack export`` must read the restored stack."""
    from statekeeper.pulumi_cli import Pulumi

    with tempfile.TemporaryDirectory() as scratch:
        pulumi = Pulumi(target, cwd=Path(scratch))
        done = pulumi.run("stack", "export", "--stack",
                          f"organization/{project}/{stack}")
    state = checkpoint.parse(done.stdout.encode(), f"{project}/{stack}")
    if state.pending_operations and warn_pending:
        report.warn(
            f"{project}/{stack} has {len(state.pending_operations)} pending "
            "operation(s) from an interrupted update: "
            + "; ".join(state.pending_summary()[:3])
            + " (check those resources; 'pulumi refresh' reconciles)")
