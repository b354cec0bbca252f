"""Stack export files: write them privately, check them before any import.

An export file is what ``pulumi stack export`` prints:
``{"version": 3, "deployment": {"resources": [...], ...}}``.  Secret
values in it stay encrypted under the stack's secrets provider.

Importing replaces a stack's whole state, so a file is checked before
anything is written: it must be JSON, carry a deployment version the CLI
reads, and hold only URNs of the stack and project it goes into.  A state
file of another stack would make Pulumi manage (and later delete)
resources that belong to someone else.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from statekeeper.checkpoint import Checkpoint
from statekeeper.errors import ConfigError, Refused
from statekeeper.project import name as project_name
from statekeeper.project import project_file

if TYPE_CHECKING:
    from statekeeper.config import Settings
    from statekeeper.output import Report
    from statekeeper.pulumi_cli import Pulumi

# Deployment schema versions `pulumi stack import` reads (3 is current).
SUPPORTED_VERSIONS = (1, 2, 3)

_URN_RE = re.compile(
    r"^urn:pulumi:(?P<stack>[^:]+)::(?P<project>[^:]+)::"
    r"(?P<type>.+)::(?P<name>[^:]*)$"
)


@dataclass(frozen=True)
class Urn:
    """The parts of ``urn:pulumi:<stack>::<project>::<type>::<name>``."""

    stack: str
    project: str
    type: str
    name: str


def parse_urn(text: str) -> Urn | None:
    match = _URN_RE.match(text)
    if not match:
        return None
    return Urn(**match.groupdict())


# --- reading and checking an export ---------------------------------------


def load_export(text: str, where: str) -> dict[str, Any]:
    """Parse export JSON and check its shape; ``where`` names it."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{where} is not valid JSON (line {exc.lineno})",
            "use a file written by 'inv stack.export' or "
            "'pulumi stack export'",
        ) from None
    if not isinstance(doc, dict) or not isinstance(
            doc.get("deployment"), dict):
        hint = (" (it looks like a checkpoint file, not an export)"
                if isinstance(doc, dict) and "checkpoint" in doc else "")
        raise ConfigError(
            f"{where} has no 'deployment' object{hint}",
            "use a file written by 'inv stack.export' or "
            "'pulumi stack export'",
        )
    version = doc.get("version")
    if version not in SUPPORTED_VERSIONS or isinstance(version, bool):
        raise ConfigError(
            f"{where} has deployment version {version!r}; this Pulumi "
            f"CLI reads versions {SUPPORTED_VERSIONS[0]} to "
            f"{SUPPORTED_VERSIONS[-1]}",
            "export it again with the pinned Pulumi CLI",
        )
    resources = doc["deployment"].get("resources") or []
    if not isinstance(resources, list) or not all(
            isinstance(r, dict) and isinstance(r.get("urn"), str)
            for r in resources):
        raise ConfigError(f"{where} has a malformed 'resources' list",
                          "export the stack again")
    return doc


def check_export(doc: dict[str, Any], stack: str, project: str,
                 where: str) -> Checkpoint:
    """Refuse a deployment whose URNs belong to another stack/project."""
    deployment = doc["deployment"]
    for resource in deployment.get("resources") or []:
        urn = parse_urn(resource["urn"])
        if urn is None:
            raise ConfigError(f"{where} holds a malformed URN "
                              f"'{resource['urn'][:80]}'",
                              "export the stack again")
        if urn.stack != stack or urn.project != project:
            raise Refused(
                f"{where} holds state of stack '{urn.stack}' of project "
                f"'{urn.project}', not '{stack}' of '{project}'",
                f"import it into stack '{urn.stack}', or export "
                f"'{stack}' instead",
            )
    return Checkpoint(stack=stack, deployment=deployment)


def read_export_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path} does not exist",
                          "pass --file with an export file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc.__class__.__name__}",
                          "make it a readable UTF-8 JSON file") from None
    return load_export(text, str(path))


# --- the CLI side -----------------------------------------------------------


def export_deployment(pulumi: Pulumi, stack: str, *,
                      show_secrets: bool = False) -> dict[str, Any]:
    """``pulumi stack export`` parsed; with ``show_secrets`` the result
    holds plaintext secrets and must stay in memory."""
    args = ["stack", "export", "--stack", stack]
    if show_secrets:
        args.append("--show-secrets")
    done = pulumi.run(*args, secrets=show_secrets)
    return load_export(done.stdout, f"the export of stack '{stack}'")


def import_deployment(pulumi: Pulumi, stack: str,
                      doc: dict[str, Any], *, force: bool = False) -> None:
    """Import through standard input, so no copy lands on disk."""
    args = ["stack", "import", "--stack", stack]
    if force:
        args.append("--force")
    pulumi.run(*args, input=json.dumps(doc), secrets=True)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only, replacing atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent,
                                         prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def existing_stacks(pulumi: Pulumi) -> list[str]:
    from statekeeper.stacks import short_name

    return [short_name(s["name"]) for s in pulumi.stacks()]


def require_stack(pulumi: Pulumi, stack: str) -> None:
    from statekeeper.stacks import missing_stack_message

    names = existing_stacks(pulumi)
    if stack not in names:
        raise ConfigError(*missing_stack_message(stack, names))


# --- the tasks ------------------------------------------------------------


def run_export(settings: Settings, stack: str, file: str | None,
               report: Report, out: TextIO) -> int:
    """Export ``stack`` of the configured backend to ``file`` or ``out``."""
    from statekeeper.pulumi_cli import Pulumi

    pulumi = Pulumi(settings, cwd=settings.project_dir)
    project_file(settings.project_dir)
    require_stack(pulumi, stack)
    doc = export_deployment(pulumi, stack)
    text = json.dumps(doc, indent=4) + "\n"
    count = len(doc["deployment"].get("resources") or [])
    if file:
        write_private(Path(file), text)
        report.line(f"exported stack '{stack}' ({count} resources) to "
                    f"{file}; secret values stay encrypted with the "
                    "stack's secrets provider")
    else:
        out.write(text)
        # stdout carries the JSON: the closing line goes to stderr.
        print(f"exported stack '{stack}' ({count} resources)",
              file=report.err)
    return 0


def run_import(settings: Settings, stack: str, file: str, *,
               force: bool, report: Report) -> int:
    """Check ``file`` and import it into the existing ``stack``."""
    from statekeeper.pulumi_cli import Pulumi

    path = Path(file)
    doc = read_export_file(path)
    project = project_name(settings.project_dir)
    checkpoint = check_export(doc, stack, project, str(path))
    pending = checkpoint.pending_summary()
    if pending and not force:
        raise Refused(
            f"{path} has {len(pending)} pending operation(s) that the "
            f"import would drop: {'; '.join(pending)}",
            "check those resources by hand, then pass --force",
        )
    pulumi = Pulumi(settings, cwd=settings.project_dir)
    require_stack(pulumi, stack)
    before = export_deployment(pulumi, stack)
    had = len(before["deployment"].get("resources") or [])
    import_deployment(pulumi, stack, doc)
    count = len(checkpoint.resources)
    report.line(f"imported {path} into stack '{stack}': {count} resources "
                f"(the stack had {had})")
    if pending:
        report.warn(f"dropped {len(pending)} pending operation(s): "
                    + "; ".join(pending))
    return 0
