"""Take a stack's lock the way the Pulumi CLI does, for our own writes.

The S3 backend locks a stack with one object per process under
``locks/organization/<project>/<stack>/<uuid>.json`` holding ``{"pid",
"username", "hostname", "timestamp"}``.  A ``pulumi up`` that finds any
such object refuses to run, so writing one while restore or rollback
replaces a checkpoint keeps a deploy from interleaving with it.

Like Pulumi's own lock this is check, write, check again: best effort, not
atomic.  Two writers starting within the same few milliseconds can both
pass; S3 conditional writes could close that gap, but Pulumi does not use
them, so they would not stop a deploy anyway.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from statekeeper import checkpoint
from statekeeper.errors import Refused


def holders(client: Any, bucket: str, state_root: str, project: str,
            stack: str) -> list[tuple[str, dict[str, Any]]]:
    """(key, lock content) of every lock object the stack has now."""
    prefix = checkpoint.locks_prefix(state_root, project, stack)
    found = []
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    for item in listing.get("Contents", []):
        try:
            body = client.get_object(Bucket=bucket, Key=item["Key"])
            content = json.loads(body["Body"].read())
        except Exception:  # noqa: BLE001 - a lock we cannot read still locks
            content = {}
        found.append((item["Key"], content if isinstance(content, dict)
                      else {}))
    return found


def describe(content: dict[str, Any]) -> str:
    who = content.get("username") or "someone"
    host = content.get("hostname") or "an unknown host"
    since = content.get("timestamp") or "an unknown time"
    return f"pid {content.get('pid', '?')} of {who} on {host} since {since}"


@contextmanager
def held(client: Any, bucket: str, state_root: str, project: str,
         stack: str) -> Iterator[str]:
    """Hold the stack's lock for the block; refuse if anyone else does."""
    _refuse_if_locked(client, bucket, state_root, project, stack)
    key = (checkpoint.locks_prefix(state_root, project, stack)
           + f"{uuid.uuid4()}.json")
    content = {
        "pid": os.getpid(),
        "username": getpass.getuser(),
        "hostname": socket.gethostname(),
        "timestamp": datetime.now(UTC).isoformat(),
    }
    client.put_object(Bucket=bucket, Key=key,
                      Body=json.dumps(content).encode())
    try:
        _refuse_if_locked(client, bucket, state_root, project, stack,
                          own=key)
        yield key
    finally:
        client.delete_object(Bucket=bucket, Key=key)


def _refuse_if_locked(client: Any, bucket: str, state_root: str,
                      project: str, stack: str, own: str = "") -> None:
    others = [(k, c) for k, c in holders(client, bucket, state_root,
                                         project, stack) if k != own]
    if others:
        raise Refused(
            f"stack '{stack}' is locked by {describe(others[0][1])} "
            "(an update may be running)",
            "wait for it to finish; if that process died, run "
            f"'inv locks.clear --stack {stack}' and retry",
        )
