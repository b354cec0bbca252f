"""Where the Pulumi S3 ("diy") backend keeps things, and how to read them.

Layout under ``<prefix>/.pulumi/`` (project-scoped, ``meta.yaml`` version 1):

- ``stacks/<project>/<stack>.json``: the checkpoint (also ``.json.gz`` or
  ``.json.zst`` when compression is on), ``.json.bak`` the previous one;
- ``history/<project>/<stack>/``: one history/checkpoint pair per update;
- ``backups/<project>/<stack>/``: a copy after each update;
- ``locks/organization/<project>/<stack>/<uuid>.json``: one per CLI process.

A checkpoint file is ``{"version": 3, "checkpoint": {"stack", "config",
"latest": <deployment>}}``; ``pulumi stack export`` prints the deployment as
``{"version": 3, "deployment": {...}}`` instead.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Any

from statekeeper.errors import StatekeeperError

CHECKPOINT_SUFFIXES = (".json", ".json.gz", ".json.zst")


def stack_key(state_root: str, project: str, stack: str,
              suffix: str = ".json") -> str:
    return f"{state_root}stacks/{project}/{stack}{suffix}"


def history_prefix(state_root: str, project: str, stack: str) -> str:
    return f"{state_root}history/{project}/{stack}/"


def locks_prefix(state_root: str, project: str, stack: str) -> str:
    return f"{state_root}locks/organization/{project}/{stack}/"


def split_stack_key(state_root: str, key: str) -> tuple[str, str] | None:
    """(project, stack) of a checkpoint key, or None for any other key."""
    if not key.startswith(f"{state_root}stacks/"):
        return None
    rest = key[len(state_root) + len("stacks/"):]
    for suffix in CHECKPOINT_SUFFIXES:
        if rest.endswith(suffix) and rest.count("/") == 1:
            project, stack = rest[: -len(suffix)].split("/")
            return project, stack
    return None


class CorruptCheckpoint(StatekeeperError):
    """A file that should be a checkpoint does not parse as one."""


@dataclass(frozen=True)
class Checkpoint:
    stack: str
    deployment: dict[str, Any]

    @property
    def resources(self) -> list[dict[str, Any]]:
        return self.deployment.get("resources") or []

    @property
    def pending_operations(self) -> list[dict[str, Any]]:
        return self.deployment.get("pending_operations") or []

    def pending_summary(self) -> list[str]:
        """'<type> <urn>' for each half-done operation."""
        return [f"{op.get('type', '?')} {op.get('resource', {}).get('urn')}"
                for op in self.pending_operations]


def decode(body: bytes, key: str = "") -> bytes:
    if key.endswith(".gz") or body[:2] == b"\x1f\x8b":
        return gzip.decompress(body)
    if key.endswith(".zst"):
        raise CorruptCheckpoint(
            f"{key} is zstd-compressed, which this tool cannot read",
            "unset PULUMI_DIY_BACKEND_ZSTD and run one update to rewrite it",
        )
    return body


def parse(body: bytes, key: str = "checkpoint") -> Checkpoint:
    """Parse a checkpoint file (or a stack export) or raise a clear error."""
    try:
        doc = json.loads(decode(body, key))
    except (ValueError, OSError):
        raise CorruptCheckpoint(
            f"{key} is not valid JSON",
            "pick another version (inv state.history) or restore a backup",
        ) from None
    if not isinstance(doc, dict):
        raise CorruptCheckpoint(f"{key} is not a checkpoint object",
                                "pick another version or restore a backup")
    if "deployment" in doc:
        deployment = doc.get("deployment") or {}
        stack = _stack_from_urns(deployment)
    elif isinstance(doc.get("checkpoint"), dict):
        inner = doc["checkpoint"]
        deployment = inner.get("latest") or {}
        stack = str(inner.get("stack", ""))
    else:
        raise CorruptCheckpoint(
            f"{key} has neither 'checkpoint' nor 'deployment'",
            "pick another version (inv state.history) or restore a backup",
        )
    if not isinstance(deployment, dict):
        raise CorruptCheckpoint(f"{key} has a malformed deployment",
                                "pick another version or restore a backup")
    return Checkpoint(stack=stack, deployment=deployment)


def _stack_from_urns(deployment: dict[str, Any]) -> str:
    for resource in deployment.get("resources") or []:
        urn = str(resource.get("urn", ""))
        parts = urn.split("::")
        if len(parts) >= 2 and parts[0].startswith("urn:pulumi:"):
            return parts[0][len("urn:pulumi:"):]
    return ""
