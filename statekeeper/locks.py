"""What an interrupted update leaves behind: lock objects and half-done
operations in the checkpoint.

Each Pulumi CLI process that updates a stack writes
``<state root>locks/organization/<project>/<stack>/<uuid>.json`` holding
``{"pid", "username", "hostname", "timestamp"}`` and deletes it when done.
A killed process leaves it, and every later update of the stack fails with
"the stack is currently locked".  A lock is only known to be stale when it
was written on this host by a process that is gone; elsewhere its age is
the only clue, so removing a young one needs ``--force``.

Everything here reads S3 directly (no Pulumi CLI), so ``inv doctor`` can
call :func:`stale_locks` and :func:`stacks_with_pending_operations`.
"""

from __future__ import annotations

import json
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO

from statekeeper import checkpoint
from statekeeper.errors import ConfigError, Refused
from statekeeper.process import alive as pid_alive

if TYPE_CHECKING:
    from statekeeper.config import Settings
    from statekeeper.output import Report

# A lock younger than this may belong to an update still running on
# another machine; `inv locks.clear` wants --force for it.
DEFAULT_MIN_AGE = 15 * 60

# NOTE: locks of the legacy (non project-scoped) layout, `locks/<stack>/`,
# are not read: CLI 3.257+ refuses that layout anyway.
_LOCK_KEY_RE = re.compile(
    r"^locks/organization/(?P<project>[^/]+)/(?P<stack>[^/]+)/"
    r"(?P<lock_id>[^/]+)\.json$"
)


@dataclass(frozen=True)
class Lock:
    """One lock object, with what can be told about its process."""

    key: str
    project: str
    stack: str
    lock_id: str
    pid: int | None
    username: str
    hostname: str
    timestamp: datetime | None
    age_seconds: float | None
    # "alive" or "gone" on this host, "unknown" elsewhere.
    process: str

    @property
    def fix(self) -> str:
        """The command that removes this lock."""
        return (f"inv locks.clear --stack {self.stack} "
                f"--project-name {self.project}")

    def is_stale(self, min_age_seconds: float = DEFAULT_MIN_AGE) -> bool:
        if self.process == "gone":
            return True
        if self.process == "alive":
            return False
        return self.age_seconds is None or self.age_seconds >= min_age_seconds


class PendingStack(NamedTuple):
    """A stack whose checkpoint holds half-done operations."""

    project: str
    stack: str
    operations: list[str]

    @property
    def fix(self) -> str:
        return (f"pulumi refresh --stack {self.stack} --clear-pending-creates "
                f"--yes (in project '{self.project}'), or check each "
                "resource by hand and re-import the state with "
                "inv stack.import")


def parse_timestamp(text: str) -> datetime | None:
    """Go's RFC 3339 time with up to nanoseconds, as a UTC datetime."""
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$",
                     text or "")
    if not match:
        return None
    base, fraction, zone = match.groups()
    fraction = (fraction or "")[:7]  # Python keeps microseconds
    try:
        stamp = datetime.fromisoformat(
            f"{base}{fraction}{'+00:00' if zone == 'Z' else zone}")
    except ValueError:
        return None
    return stamp.astimezone(UTC)


def process_state(pid: int | None, hostname: str) -> str:
    """'alive' or 'gone' for a pid of this host, else 'unknown'."""
    if pid is None or pid <= 0 or hostname != socket.gethostname():
        return "unknown"
    return "alive" if pid_alive(pid) else "gone"


def lock_from(key: str, relative: str, body: bytes,
              modified: datetime | None, now: datetime) -> Lock | None:
    match = _LOCK_KEY_RE.match(relative)
    if not match:
        return None
    try:
        content: Any = json.loads(body)
    except ValueError:
        content = {}
    if not isinstance(content, dict):
        content = {}
    pid = content.get("pid")
    pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
    hostname = str(content.get("hostname") or "?")
    stamp = parse_timestamp(str(content.get("timestamp") or "")) or modified
    age = (now - stamp).total_seconds() if stamp else None
    return Lock(
        key=key, project=match["project"], stack=match["stack"],
        lock_id=match["lock_id"], pid=pid,
        username=str(content.get("username") or "?"), hostname=hostname,
        timestamp=stamp, age_seconds=age,
        process=process_state(pid, hostname),
    )


def list_locks(settings: Settings, *, stack: str | None = None,
               project: str | None = None) -> list[Lock]:
    """Every lock object under the state root, oldest first."""
    from statekeeper import aws

    s3 = aws.client(settings, "s3")
    root = settings.state_root
    prefix = f"{root}locks/organization/"
    if project:
        prefix += f"{project}/"
        if stack:
            prefix += f"{stack}/"
    now = datetime.now(UTC)
    found: list[Lock] = []
    with aws.translated(settings, "listing lock objects"):
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=settings.bucket, Prefix=prefix)
        for page in pages:
            for item in page.get("Contents", []):
                key = item["Key"]
                relative = key[len(root):]
                match = _LOCK_KEY_RE.match(relative)
                if not match or (stack and match["stack"] != stack):
                    continue
                try:
                    body = s3.get_object(Bucket=settings.bucket,
                                         Key=key)["Body"].read()
                except s3.exceptions.NoSuchKey:
                    continue  # released while we listed
                lock = lock_from(key, relative, body,
                                 item.get("LastModified"), now)
                if lock:
                    found.append(lock)
    return sorted(found, key=lambda lk: -(lk.age_seconds or 0))


def stale_locks(settings: Settings,
                min_age_seconds: float = DEFAULT_MIN_AGE) -> list[Lock]:
    """Locks of a process that is gone (this host) or older than
    ``min_age_seconds`` (elsewhere); each has a ``.fix`` command."""
    return [lock for lock in list_locks(settings)
            if lock.is_stale(min_age_seconds)]


def stacks_with_pending_operations(settings: Settings) -> list[PendingStack]:
    """Stacks whose current checkpoint holds ``pending_operations``: an
    update was interrupted while it created, updated or deleted them."""
    from statekeeper import aws

    s3 = aws.client(settings, "s3")
    root = settings.state_root
    newest: dict[tuple[str, str], tuple[datetime, str]] = {}
    with aws.translated(settings, "listing checkpoints"):
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket=settings.bucket, Prefix=f"{root}stacks/")
        for page in pages:
            for item in page.get("Contents", []):
                names = checkpoint.split_stack_key(root, item["Key"])
                if names is None:
                    continue
                seen = newest.get(names)
                if seen is None or item["LastModified"] > seen[0]:
                    newest[names] = (item["LastModified"], item["Key"])
        found: list[PendingStack] = []
        for (project, stack), (_, key) in sorted(newest.items()):
            body = s3.get_object(Bucket=settings.bucket, Key=key)["Body"]
            try:
                parsed = checkpoint.parse(body.read(), key)
            except checkpoint.CorruptCheckpoint:
                continue  # doctor's checkpoint check reports these
            if parsed.pending_operations:
                found.append(PendingStack(project, stack,
                                          parsed.pending_summary()))
    return found


# --- the tasks ------------------------------------------------------------


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def print_table(locks: list[Lock], out: TextIO) -> None:
    rows = [("STACK", "PROJECT", "WHO", "WHERE", "PID", "AGE", "PROCESS")]
    for lock in locks:
        rows.append((lock.stack, lock.project, lock.username, lock.hostname,
                     str(lock.pid if lock.pid is not None else "?"),
                     format_age(lock.age_seconds), lock.process))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths,
                                                          strict=True))
              .rstrip(), file=out)


def run_list(settings: Settings, stack: str | None, report: Report,
             min_age_seconds: float = DEFAULT_MIN_AGE) -> int:
    locks = list_locks(settings, stack=stack)
    if locks:
        print_table(locks, report.out)
    stale = [lock for lock in locks if lock.is_stale(min_age_seconds)]
    for lock in stale:
        report.warn(f"stale lock on stack '{lock.stack}' "
                    f"({lock.username}@{lock.hostname}, pid {lock.pid}, "
                    f"{lock.process}); fix: {lock.fix}")
    where = f" on stack '{stack}'" if stack else ""
    report.line(f"locks: {len(locks)} lock(s){where}, {len(stale)} stale")
    return 0


def confirm(question: str, stdin: TextIO, out: TextIO) -> bool:
    print(f"{question} [y/N] ", end="", file=out, flush=True)
    answer = stdin.readline()
    if not answer.endswith("\n"):
        print(file=out)
    return answer.strip().lower() in {"y", "yes"}


def run_clear(settings: Settings, stack: str, project: str | None, *,
              force: bool, yes: bool, report: Report, stdin: TextIO,
              min_age_seconds: float = DEFAULT_MIN_AGE) -> int:
    """Delete the locks of ``stack`` after checks and a confirmation."""
    from statekeeper import aws

    locks = list_locks(settings, stack=stack, project=project)
    if not locks:
        report.line(f"no locks on stack '{stack}': nothing to clear")
        return 0
    projects = sorted({lock.project for lock in locks})
    if len(projects) > 1:
        raise ConfigError(
            f"stack '{stack}' has locks in several projects: "
            + ", ".join(projects),
            "pass --project-name with one of them",
        )
    for lock in locks:
        if force or lock.process == "gone":
            continue
        who = f"{lock.username}@{lock.hostname} pid {lock.pid}"
        if lock.process == "alive":
            raise Refused(
                f"lock on stack '{stack}' belongs to {who}, which is still "
                "running on this host",
                "wait for it to end (or stop it), or pass --force",
            )
        if not lock.is_stale(min_age_seconds):
            raise Refused(
                f"lock on stack '{stack}' by {who} is only "
                f"{format_age(lock.age_seconds)} old and may belong to an "
                "update still running",
                f"wait until it is {format_age(min_age_seconds)} old, or "
                "pass --force if that update is surely dead",
            )
    print_table(locks, report.out)
    if not yes and not confirm(
            f"remove {len(locks)} lock(s) of stack '{stack}'?", stdin,
            report.out):
        raise Refused("no lock removed: not confirmed",
                      "answer 'y', or pass --yes")
    s3 = aws.client(settings, "s3")
    with aws.translated(settings, "deleting lock objects"):
        for lock in locks:
            s3.delete_object(Bucket=settings.bucket, Key=lock.key)
            report.step("removed", f"lock {lock.lock_id}",
                        f"{lock.username}@{lock.hostname} pid {lock.pid}")
    report.summary(f"locks.clear on stack '{stack}'")
    return 0
