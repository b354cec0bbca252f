"""Keep two backups to one destination from overlapping.

Two locks, taken in order:

- :func:`run_lock`, a flock on this host, so a second run here queues or
  exits at once without touching the destination;
- :class:`Lease`, an object ``lock.json`` at an S3 destination created with
  a conditional PUT (``If-None-Match: *``), so runs on other hosts (two
  machines with the same cron line) are kept apart too.  The holder renews
  it every minute; a lease not renewed for 15 minutes (by the store's
  clock), or held by a dead process of this host, is taken over with
  ``If-Match`` so only one taker wins.

Local directories get the flock only.  Stores that answer conditional
writes with 501 get the flock only, and the run says so; a store that
ignored the condition headers silently would get no cross-host protection
(AWS, SeaweedFS, MinIO and moto all honour them).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import botocore.exceptions as bx

from statekeeper import aws, process
from statekeeper.backup_store import S3Destination
from statekeeper.errors import StatekeeperError
from statekeeper.output import Report

LEASE = "lock.json"
STALE = timedelta(minutes=15)
RENEW_SECONDS = 60.0
CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict",
                  "409"}


class Busy(StatekeeperError):
    """Another backup to the same destination holds the run lock."""

    exit_code = 75  # EX_TEMPFAIL: cron should alert, a retry may pass


def _busy(url: str, holder: str) -> Busy:
    return Busy(f"another backup to {url} is running ({holder}); this run "
                "did nothing", "let it finish; pass --wait SECONDS to queue "
                "behind it")


@contextmanager
def run_lock(destination_url: str, deadline: float) -> Iterator[None]:
    """A flock on a file under ~/.cache/statekeeper, held until the block
    ends: the kernel drops it when the process dies, so a killed run never
    blocks the next one."""
    folder = Path.home() / ".cache" / "statekeeper"
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(destination_url.encode()).hexdigest()[:16]
    handle = (folder / f"backup-{name}.lock").open("a+")
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    raise _busy(destination_url, "pid "
                                + (handle.read().strip() or "?")) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


def _store_now(response: dict[str, Any]) -> datetime:
    """The store's time from an answer's Date header (this host's clock if
    it has none that parses): lease ages never mix two hosts' clocks."""
    date = response["ResponseMetadata"]["HTTPHeaders"].get("date", "")
    try:
        now = parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        return datetime.now(UTC)
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def stale(holder: dict[str, Any], age: timedelta, *, host: str) -> bool:
    """Whether a lease may be taken over: not renewed for ``STALE``, or
    held by a process of ``host`` (this host) that no longer runs."""
    if age > STALE:
        return True
    pid = holder.get("pid")
    return (holder.get("host") == host and isinstance(pid, int)
            and not process.alive(pid))


class Lease:
    """``lock.json`` at an S3 destination, held for one run."""

    def __init__(self, destination: S3Destination, report: Report) -> None:
        self.destination = destination
        self.report = report
        self.key = destination.prefix + LEASE
        self.me = {"host": socket.gethostname(), "pid": os.getpid(),
                   "token": os.urandom(8).hex(),
                   "started": datetime.now(UTC).isoformat()}
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def _client(self) -> Any:
        return self.destination.client

    def _put(self, **condition: str) -> str:
        self.me["renewed"] = datetime.now(UTC).isoformat()
        done = self._client.put_object(
            Bucket=self.destination.bucket, Key=self.key,
            Body=json.dumps(self.me).encode(), **condition)
        return done["ETag"]

    def _read(self) -> tuple[dict[str, Any], str, timedelta] | None:
        """The holder, its ETag and how long since it was last written
        (both times by the store's clock); None when there is none."""
        try:
            got = self._client.get_object(Bucket=self.destination.bucket,
                                          Key=self.key)
        except bx.ClientError as exc:
            if aws.error_code(exc) in {"NoSuchKey", "404"}:
                return None
            raise
        try:
            holder = json.loads(got["Body"].read())
            holder = holder if isinstance(holder, dict) else {}
        except ValueError:
            holder = {}
        return holder, got["ETag"], _store_now(got) - got["LastModified"]

    def acquire(self, deadline: float) -> bool:
        """Take the lease, waiting until ``deadline`` (monotonic) for a
        live holder; False when the store cannot do conditional writes."""
        while True:
            try:
                self.etag = self._put(IfNoneMatch="*")
            except bx.ClientError as exc:
                if aws.is_unsupported(exc):
                    self.report.warn(
                        f"{self.destination.url} does not support "
                        "conditional writes: only backups on this host are "
                        "kept from overlapping")
                    return False
                if aws.error_code(exc) not in CONFLICT_CODES:
                    raise
            else:
                break
            found = self._read()
            if found is None:
                continue  # released in between: try again at once
            holder, etag, age = found
            if stale(holder, age, host=self.me["host"]):
                try:
                    self.etag = self._put(IfMatch=etag)
                except bx.ClientError as exc:
                    if aws.error_code(exc) not in CONFLICT_CODES:
                        raise
                    continue  # another run took it over first
                self.report.warn(
                    "took over a stale backup lock of "
                    f"{holder.get('host', '?')} (pid "
                    f"{holder.get('pid', '?')})")
                break
            if time.monotonic() >= deadline:
                raise _busy(self.destination.url,
                            f"host {holder.get('host', '?')}, pid "
                            f"{holder.get('pid', '?')}, since "
                            f"{holder.get('started', '?')}")
            time.sleep(min(2.0, max(deadline - time.monotonic(), 0.1)))
        self._renewer = threading.Thread(target=self._renew, daemon=True)
        self._renewer.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                self.etag = self._put(IfMatch=self.etag)
            except bx.ClientError as exc:
                if aws.error_code(exc) not in CONFLICT_CODES:
                    continue  # a blip: the next renewal may pass
                # Lost, unless the store merely disagrees about the ETag.
                try:
                    found = self._read()
                except (bx.ClientError, bx.BotoCoreError):
                    continue
                if found is None or found[0].get("token") != \
                        self.me["token"]:
                    self.lost = True
                    return
                self.etag = found[1]
            except bx.BotoCoreError:
                continue

    def check(self) -> None:
        """Raise if another run took the lease over (this run stalled for
        longer than the stale limit)."""
        if self.lost:
            raise Busy(
                f"this run lost its lock at {self.destination.url} to "
                "another backup after stalling; its snapshot was not "
                "completed", "run it again")

    def release(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=5)
        if self.lost or self.etag is None:
            return
        try:  # still ours: a takeover would have been seen as lost
            self._client.delete_object(Bucket=self.destination.bucket,
                                       Key=self.key)
        except (bx.ClientError, bx.BotoCoreError) as exc:
            self.report.warn(
                f"could not remove {self.destination.url}{LEASE} "
                f"({aws.error_code(exc) or type(exc).__name__}); runs on "
                "other hosts will take it over in 15 minutes")


@contextmanager
def held(destination: Any, wait: float, report: Report,
         *, lease: bool) -> Iterator[Lease | None]:
    """Both locks for one run; ``lease`` False takes the flock only."""
    deadline = time.monotonic() + max(wait, 0)
    with run_lock(destination.url, deadline):
        if not lease or not isinstance(destination, S3Destination):
            yield None
            return
        taken = Lease(destination, report)
        if not taken.acquire(deadline):
            yield None
            return
        try:
            yield taken
        finally:
            taken.release()
