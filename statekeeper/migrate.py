"""Move live stacks from one backend to another without touching resources.

A stack moves as its state (the deployment) and its config file
(``Pulumi.<stack>.yaml``).  Both hold secrets encrypted by the *source's*
secrets provider, which the target cannot read: a different passphrase, a
KMS key, or Pulumi Cloud's per-stack key that works only while logged in.
So each secret is decrypted by the source and re-encrypted by the target:

1. ``pulumi stack export --show-secrets`` and
   ``pulumi config --show-secrets --json`` on the source, captured in
   memory only (never a file, never printed);
2. ``pulumi stack init`` on the target with the target's provider, in a
   private scratch copy of the project file, so the project's own config
   file is left alone until the end;
3. the deployment, its secrets provider swapped for the target's, goes
   to ``pulumi stack import`` on standard input: the target CLI encrypts
   every plaintext secret as it saves the state;
4. plain config is copied, each secret config value goes to
   ``pulumi config set --secret`` on standard input;
5. the target is read back and compared with the source (URNs, inputs,
   outputs, every config value decrypted); only then is the new config
   file put into the project (the old one kept as ``.pre-migrate``) and,
   when asked, the source stack removed.

``pulumi stack migrate`` (CLI 3.254+) does much the same but reads one
passphrase for both sides and rewrites the project's config file before
anything is verified, so it is not used.

The source passphrase, when it differs from the target's, comes from
``--from-passphrase-file`` or ``SOURCE_PULUMI_CONFIG_PASSPHRASE`` /
``SOURCE_PULUMI_CONFIG_PASSPHRASE_FILE``; it reaches the CLI through its
environment, never its command line.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from statekeeper import transfer
from statekeeper.checkpoint import Checkpoint
from statekeeper.errors import ConfigError, PulumiError, Refused
from statekeeper.project import name as project_name
from statekeeper.project import project_file, stack_config_file

if TYPE_CHECKING:
    from collections.abc import Iterator

    from statekeeper.config import Settings
    from statekeeper.output import Report
    from statekeeper.pulumi_cli import Pulumi

_ENCRYPTION_KEYS = ("encryptionsalt", "secretsprovider", "encryptedkey")
_SECRET_SIG = "4dabf18193072939515e22adb298388d"


# --- backends ----------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """A backend URL and what kind of store it points at."""

    url: str
    kind: str  # "s3", "file" or "cloud"

    @property
    def label(self) -> str:
        """The URL without its query (endpoint details)."""
        return self.url.split("?", 1)[0]


def parse_backend(url: str, settings: Settings, flag: str) -> Backend:
    """Classify ``url``; an ``s3://`` URL without a query gets the
    configured region and endpoint, so the sandbox works unchanged."""
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme == "s3" and parts.netloc:
        if not parts.query:
            from statekeeper.config import build_backend_url

            url = build_backend_url(parts.netloc, parts.path.strip("/"),
                                    settings.region, settings.endpoint_url)
        return Backend(url, "s3")
    if parts.scheme == "file" and (parts.path or parts.netloc):
        return Backend(url, "file")
    if parts.scheme in {"https", "http"} and parts.netloc:
        # NOTE: the Pulumi Cloud source path (export --show-secrets while
        # logged in, PULUMI_ACCESS_TOKEN kept for https URLs) is untested
        # end to end: tests must not reach the Cloud.  A stack config's
        # `environment:` (ESC) imports are copied as they are and only
        # work while a Cloud login remains.
        return Backend(url, "cloud")
    raise ConfigError(
        f"{flag} '{url.split('?', 1)[0]}' is not a backend URL",
        "use s3://BUCKET[/PREFIX], file:///PATH or https://api.pulumi.com",
    )


def s3_settings(settings: Settings, backend: Backend) -> Settings:
    """Settings that reach the bucket and prefix of an ``s3://`` backend
    with the configured credentials and endpoint."""
    parts = urlsplit(backend.url)
    query = parse_qs(parts.query)
    region = (query.get("region") or [settings.region])[0]
    return replace(settings, bucket=parts.netloc,
                   prefix=parts.path.strip("/"), region=region,
                   backend_url=backend.url)


def source_environ(settings: Settings,
                   passphrase_file: str | None) -> dict[str, str]:
    """The source's passphrase as CLI environment (empty: same as the
    target's)."""
    env = settings.environ
    path = passphrase_file or env.get("SOURCE_PULUMI_CONFIG_PASSPHRASE_FILE")
    if "SOURCE_PULUMI_CONFIG_PASSPHRASE" in env and not passphrase_file:
        return {"PULUMI_CONFIG_PASSPHRASE":
                env["SOURCE_PULUMI_CONFIG_PASSPHRASE"]}
    if not path:
        return {}
    file = Path(path).expanduser()
    try:
        # The CLI trims a passphrase file the same way.
        value = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"source passphrase file {file} is not readable",
                          "point --from-passphrase-file at the file "
                          "holding the source passphrase") from None
    return {"PULUMI_CONFIG_PASSPHRASE": value}


# --- scratch copies of the project ----------------------------------------


@contextmanager
def scratch_project(project_dir: Path, stack: str, *,
                    with_config: bool) -> Iterator[Path]:
    """A private folder holding the project file (and the stack's config
    file when asked), deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="statekeeper-migrate-") as tmp:
        root = Path(tmp)
        root.chmod(0o700)
        source = project_file(project_dir)
        shutil.copy2(source, root / source.name)
        config = stack_config_file(project_dir, stack)
        target = stack_config_file(root, stack)
        target.parent.mkdir(parents=True, exist_ok=True)
        if with_config and config.is_file():
            shutil.copy2(config, target)
        yield root


# --- config: re-encrypt each secret -----------------------------------------


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        return {}
    doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path} is not a YAML mapping",
                          "fix the stack config file")
    return doc


def secure_leaves(value: Any, path: tuple[Any, ...] = ()
                  ) -> Iterator[tuple[Any, ...]]:
    """Paths of ``{secure: ...}`` leaves inside a config value."""
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            yield path
            return
        for key, item in value.items():
            yield from secure_leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from secure_leaves(item, (*path, index))


def _blank_secure(value: Any) -> Any:
    """``value`` with each secure leaf replaced by an empty string."""
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            return ""
        return {k: _blank_secure(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_blank_secure(v) for v in value]
    return value


def path_expression(key: str, path: tuple[Any, ...]) -> str:
    """The ``pulumi config set --path`` spelling of ``key`` + ``path``."""
    text = key
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif str(part).isidentifier():
            text += f".{part}"
        else:
            text += "[" + json.dumps(str(part)) + "]"
    return text


def _plain_at(decrypted: dict[str, Any], key: str,
              path: tuple[Any, ...]) -> str:
    entry = decrypted.get(key)
    if not isinstance(entry, dict):
        raise PulumiError(f"config key '{key}' is missing from the source's "
                          "decrypted config")
    if not path:
        return str(entry.get("value", ""))
    node: Any = entry.get("objectValue")
    for part in path:
        node = node[part]
    return node if isinstance(node, str) else json.dumps(node)


@dataclass
class ConfigPlan:
    """The source's config, split into what is copied and what is
    re-encrypted."""

    document: dict[str, Any]
    decrypted: dict[str, Any]

    @property
    def values(self) -> dict[str, Any]:
        return self.document.get("config") or {}

    @property
    def secrets(self) -> list[tuple[str, tuple[Any, ...]]]:
        return [(key, path) for key, value in self.values.items()
                for path in secure_leaves(value)]


def read_source_config(source: Pulumi, stack_ref: str, stack: str,
                       scratch: Path) -> ConfigPlan:
    """The source's config file and every value decrypted (in memory)."""
    document = _load_yaml(stack_config_file(scratch, stack))
    decrypted = {}
    if document.get("config"):
        decrypted = source.json("config", "--show-secrets", "--stack",
                                stack_ref, secrets=True) or {}
    return ConfigPlan(document, decrypted)


def write_target_config(target: Pulumi, stack: str, scratch: Path,
                        plan: ConfigPlan) -> None:
    import yaml

    path = stack_config_file(scratch, stack)
    document = _load_yaml(path)  # holds the target's encryption keys
    for name, value in plan.document.items():
        if name not in _ENCRYPTION_KEYS and name != "config":
            document[name] = value
    # A secret top-level value is left out and set below; a secret inside
    # an object keeps its place as "" until `config set --path` fills it.
    top_secret = {key for key, path in plan.secrets if not path}
    copied = {key: _blank_secure(value) for key, value in
              plan.values.items() if key not in top_secret}
    if copied:
        document["config"] = copied
    transfer.write_private(path, yaml.safe_dump(document, sort_keys=False))
    for key, leaf in plan.secrets:
        args = ["config", "set", "--secret", "--raw", "--stack", stack]
        if leaf:
            args.append("--path")
        target.run(*args, path_expression(key, leaf),
                   input=_plain_at(plan.decrypted, key, leaf), secrets=True)


# --- comparing source and target ------------------------------------------


def _fingerprint(deployment: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for resource in deployment.get("resources") or []:
        kept = {k: resource.get(k) for k in
                ("urn", "type", "id", "inputs", "outputs", "parent",
                 "provider", "protect", "dependencies")}
        rows.append((resource["urn"], json.dumps(kept, sort_keys=True)))
    return rows


def differences(source: dict[str, Any], target: dict[str, Any]) -> list[str]:
    """What differs between two plaintext deployments (URNs only)."""
    left, right = _fingerprint(source), _fingerprint(target)
    if [u for u, _ in left] != [u for u, _ in right]:
        missing = {u for u, _ in left} - {u for u, _ in right}
        extra = {u for u, _ in right} - {u for u, _ in left}
        return ([f"missing {u}" for u in sorted(missing)]
                + [f"unexpected {u}" for u in sorted(extra)]
                or ["resources are in another order"])
    return [f"state differs for {u}" for (u, a), (_, b)
            in zip(left, right, strict=True) if a != b]


def has_secrets(value: Any) -> bool:
    if isinstance(value, dict):
        return _SECRET_SIG in value or any(has_secrets(v)
                                           for v in value.values())
    if isinstance(value, list):
        return any(has_secrets(v) for v in value)
    return False


# --- one stack ---------------------------------------------------------------


@dataclass
class Options:
    source: Backend
    target: Backend
    source_env: dict[str, str]
    dry_run: bool = False
    force: bool = False
    allow_pending: bool = False
    remove_source: bool = False


def _source_failure(error: PulumiError) -> PulumiError:
    """Point a decryption failure on the source at the source passphrase."""
    if "passphrase" not in str(error).lower():
        return error
    return PulumiError(
        f"reading the source failed: {error.problem}",
        "give the source's passphrase with --from-passphrase-file or "
        "SOURCE_PULUMI_CONFIG_PASSPHRASE; if the stack was migrated "
        "already, its config file is now Pulumi.<stack>.yaml.pre-migrate",
    )


def _scrubbed(error: PulumiError, values: list[str]) -> PulumiError:
    """The error with any decrypted value masked (defence in depth)."""
    text = str(error)
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, "***")
    return PulumiError(text)


def _plain_values(plan: ConfigPlan, exported: dict[str, Any]) -> list[str]:
    """Every decrypted secret held in memory, to mask in error text."""
    values = [_plain_at(plan.decrypted, key, path)
              for key, path in plan.secrets]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if _SECRET_SIG in node and "plaintext" in node:
                values.append(str(node["plaintext"]).strip('"'))
            for item in node.values():
                walk(item)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(exported["deployment"].get("resources"))
    return values


def _target_state(target: Pulumi, settings: Settings, options: Options,
                  project: str, stack: str) -> int | None:
    """Resources of the target stack, or None when it does not exist.

    An S3 or file target is read directly: the CLI would write
    ``meta.yaml`` into an unused bucket when it logs in, and a refused or
    dry run must leave the target as it was.
    """
    if options.target.kind == "s3":
        return _peek_s3(s3_settings(settings, options.target), project,
                        stack)
    if options.target.kind == "file":
        return _peek_file(options.target, project, stack)
    if stack not in transfer.existing_stacks(target):
        return None
    current = transfer.export_deployment(target, stack)
    return len(current["deployment"].get("resources") or [])


def _peek_s3(settings: Settings, project: str, stack: str) -> int | None:
    # NOTE: reads the project-scoped layout only (CLI 3.257+ refuses the
    # legacy one).
    from statekeeper import aws, checkpoint

    s3 = aws.client(settings, "s3")
    for suffix in checkpoint.CHECKPOINT_SUFFIXES:
        key = checkpoint.stack_key(settings.state_root, project, stack,
                                   suffix)
        with aws.translated(settings, "reading the target checkpoint"):
            try:
                body = s3.get_object(Bucket=settings.bucket,
                                     Key=key)["Body"].read()
            except s3.exceptions.NoSuchKey:
                continue
        return len(checkpoint.parse(body, key).resources)
    return None


def _peek_file(backend: Backend, project: str, stack: str) -> int | None:
    from statekeeper import checkpoint

    root = Path(urlsplit(backend.url).path) / ".pulumi"
    for suffix in checkpoint.CHECKPOINT_SUFFIXES:
        path = root / "stacks" / project / f"{stack}{suffix}"
        if path.is_file():
            return len(checkpoint.parse(path.read_bytes(),
                                        str(path)).resources)
    return None


def _check_source_locks(settings: Settings, options: Options,
                        project: str, stack: str) -> None:
    if options.source.kind != "s3":
        return
    from statekeeper import locks

    held = locks.list_locks(s3_settings(settings, options.source),
                            stack=stack, project=project)
    if held and not options.force:
        lock = held[0]
        raise Refused(
            f"source stack '{stack}' is locked by {lock.username}@"
            f"{lock.hostname} (pid {lock.pid}): an update may be running",
            "wait for it to finish, or clear a stale lock "
            "(inv locks on the source bucket)",
        )


def migrate_stack(settings: Settings, stack: str, options: Options,
                  report: Report) -> str:
    """Migrate one stack; returns the step status for the summary."""
    from statekeeper.pulumi_cli import Pulumi

    project_dir = settings.project_dir
    project = project_name(project_dir)
    name = stack.rsplit("/", 1)[-1]  # a Cloud source may say org/stack
    with scratch_project(project_dir, name, with_config=True) as src_dir, \
            scratch_project(project_dir, name, with_config=False) as tgt_dir:
        source = Pulumi(settings, cwd=src_dir,
                        backend_url=options.source.url,
                        environ=options.source_env)
        target = Pulumi(settings, cwd=tgt_dir,
                        backend_url=options.target.url)
        names = transfer.existing_stacks(source)
        if name not in names and stack not in names:
            from statekeeper.stacks import missing_stack_message

            problem, fix = missing_stack_message(name, names)
            raise ConfigError(f"{problem} on {options.source.label}", fix)
        _check_source_locks(settings, options, project, name)
        existing = _target_state(target, settings, options, project, name)
        if existing and not options.force:
            raise Refused(
                f"stack '{name}' already exists on {options.target.label} "
                f"with {existing} resources",
                "pick another target, remove that stack, or pass --force "
                "to replace its state (its resources would no longer be "
                "managed)",
            )
        try:
            exported = transfer.export_deployment(source, stack,
                                                  show_secrets=True)
            plan = read_source_config(source, stack, name, src_dir)
        except PulumiError as exc:
            raise _source_failure(exc) from None
        deployment = exported["deployment"]
        state = transfer.check_export(exported, name, project,
                                      f"stack '{stack}' on the source")
        provider = (deployment.get("secrets_providers") or {}).get(
            "type", "none")
        pending = state.pending_summary()
        if pending and not options.allow_pending:
            raise Refused(
                f"source stack '{name}' has {len(pending)} pending "
                f"operation(s) from an interrupted update: "
                + "; ".join(pending),
                "resolve them on the source first (pulumi refresh "
                "--clear-pending-creates, or check each resource), or pass "
                "--allow-pending to migrate without them",
            )
        plain = _plain_values(plan, exported)
        try:
            return _move(settings, Moving(stack, name, project, exported,
                                          state, provider, plan, pending,
                                          existing),
                         options, report, source, target, tgt_dir)
        except PulumiError as exc:
            raise _scrubbed(exc, plain) from None


@dataclass
class Moving:
    """What was read from the source for one stack."""

    source_ref: str  # as the source CLI names it (org/stack on the Cloud)
    stack: str
    project: str
    exported: dict[str, Any]  # holds plaintext secrets: memory only
    state: Checkpoint
    provider: str  # the source's secrets provider type
    plan: ConfigPlan
    pending: list[str]
    existing: int | None  # resources of the target stack; None: absent


def _move(settings: Settings, moving: Moving, options: Options,
          report: Report, source: Pulumi, target: Pulumi,
          tgt_dir: Path) -> str:
    stack, plan = moving.stack, moving.plan
    exported, pending = moving.exported, moving.pending
    count = len(moving.state.resources)
    secrets = len(plan.secrets)
    existing = moving.existing
    where = f"{options.source.label} -> {options.target.label}"
    if options.dry_run:
        target_note = ("absent" if existing is None else
                       f"exists with {existing} resources, would be "
                       "replaced")
        report.step("would migrate", f"stack '{stack}'",
                    f"{count} resources, {len(plan.values)} config keys "
                    f"({secrets} secret values), {where}; target "
                    f"{target_note}")
        return "would migrate"

    report.step("exported", f"stack '{stack}'",
                f"{count} resources from {options.source.label}")
    if existing is not None:
        target.run("stack", "rm", stack, "--yes", "--force",
                   "--preserve-config")
        report.step("removed", f"stack '{stack}' on the target",
                    f"it had {existing} resources" if existing
                    else "it was empty")
    target.run("stack", "init", stack, "--no-select", "--secrets-provider",
               settings.secrets_provider, secrets=True)
    report.step("created", f"stack '{stack}'",
                f"on {options.target.label}, secrets provider "
                f"{settings.secrets_provider.split('?', 1)[0]}")

    empty = transfer.export_deployment(target, stack)
    providers = empty["deployment"].get("secrets_providers")
    if not providers:
        raise PulumiError(f"new stack '{stack}' has no secrets provider in "
                          "its state", "check the target's Pulumi CLI")
    moved = json.loads(json.dumps(exported))
    moved["deployment"]["secrets_providers"] = providers
    moved["deployment"].pop("pending_operations", None)
    transfer.import_deployment(target, stack, moved)
    report.step("imported", f"stack '{stack}'",
                f"{count} resources, secrets re-encrypted by the target")

    write_target_config(target, stack, tgt_dir, plan)
    report.step("config", f"stack '{stack}'",
                f"{len(plan.values)} keys copied, {secrets} secret "
                "value(s) re-encrypted")

    _verify(source, target, stack, exported, plan, options)
    report.step("verified", f"stack '{stack}'",
                f"{count} URNs, inputs and outputs match; every config "
                "value decrypts on the target")

    _install_config(settings.project_dir, tgt_dir, stack, report)
    if options.remove_source:
        source.run("stack", "rm", moving.source_ref, "--yes", "--force",
                   "--preserve-config", secrets=True)
        report.step("removed", f"stack '{stack}' on the source",
                    options.source.label)
    if pending:
        report.warn(f"stack '{stack}': dropped {len(pending)} pending "
                    "operation(s); check these resources: "
                    + "; ".join(pending))
    _explain_secrets(report, stack, moving.provider, exported, plan,
                     settings)
    return "migrated"


def _verify(source: Pulumi, target: Pulumi, stack: str,
            exported: dict[str, Any], plan: ConfigPlan,
            options: Options) -> None:
    after = transfer.export_deployment(target, stack, show_secrets=True)
    problems = differences(exported["deployment"], after["deployment"])
    decrypted = {}
    if plan.values:
        decrypted = target.json("config", "--show-secrets", "--stack",
                                stack, secrets=True) or {}
    if decrypted != plan.decrypted:
        wrong = sorted(set(decrypted) ^ set(plan.decrypted)) or sorted(
            k for k in decrypted if decrypted[k] != plan.decrypted.get(k))
        problems.append("config differs for " + ", ".join(wrong))
    if problems:
        raise Refused(
            f"verification of stack '{stack}' failed: "
            + "; ".join(problems[:5]),
            f"the source is untouched; inspect the target, then remove it "
            f"(pulumi stack rm {stack} --force on "
            f"{options.target.label}) and try again",
        )


def _install_config(project_dir: Path, tgt_dir: Path, stack: str,
                    report: Report) -> None:
    made = stack_config_file(tgt_dir, stack)
    if not made.is_file():
        return
    final = stack_config_file(project_dir, stack)
    kept = ""
    if final.is_file():
        backup = final.with_name(final.name + ".pre-migrate")
        shutil.copy2(final, backup)
        kept = f", previous one kept as {backup.name}"
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(made, final)
    report.step("copied", final.name, f"into {project_dir}{kept}")


def _explain_secrets(report: Report, stack: str, provider: str,
                     exported: dict[str, Any], plan: ConfigPlan,
                     settings: Settings) -> None:
    state_secrets = has_secrets(exported["deployment"].get("resources"))
    new = settings.secrets_provider.split("?", 1)[0]
    source = {"service": "Pulumi Cloud's per-stack key",
              "passphrase": "the source passphrase",
              "cloud": "the source KMS key"}.get(provider, provider)
    report.line(
        f"secrets of '{stack}': {len(plan.secrets)} config value(s)"
        f"{' and the state secrets' if state_secrets else ''} were "
        f"decrypted with {source} in memory only and re-encrypted with "
        f"the target's {new} provider; no plaintext was written to disk "
        "or printed"
    )


# --- the task ----------------------------------------------------------------


def run(settings: Settings, stacks: list[str] | None, options: Options,
        report: Report, *, all_stacks: bool = False) -> int:
    """Migrate ``stacks`` (or every stack with ``all_stacks``)."""
    if options.source.url.split("?")[0] == options.target.url.split("?")[0]:
        raise ConfigError("--from and --to name the same backend",
                          "point --to at another bucket, prefix or URL")
    if options.remove_source and options.dry_run:
        raise ConfigError("--remove-source and --dry-run contradict",
                          "drop one of them")
    project_file(settings.project_dir)
    if all_stacks:
        from statekeeper.pulumi_cli import Pulumi

        with scratch_project(settings.project_dir, "any",
                             with_config=False) as tmp:
            source = Pulumi(settings, cwd=tmp,
                            backend_url=options.source.url,
                            environ=options.source_env)
            stacks = transfer.existing_stacks(source)
        if not stacks:
            report.line(f"no stacks of this project on "
                        f"{options.source.label}")
    if not stacks:
        raise ConfigError("no stack to migrate",
                          "pass --stack NAME or --all")
    outcomes: Counter[str] = Counter()
    for stack in stacks:
        if len(stacks) == 1:
            outcomes[migrate_stack(settings, stack, options, report)] += 1
            continue
        try:
            outcomes[migrate_stack(settings, stack, options, report)] += 1
        except (ConfigError, PulumiError, Refused) as exc:
            outcomes["failed"] += 1
            report.warn(f"stack '{stack}' not migrated: {exc}")
    label = "migrate (dry run)" if options.dry_run else "migrate"
    report.line(f"{label}: " + ", ".join(
        f"{n} {outcome}" for outcome, n in sorted(outcomes.items())))
    return 1 if outcomes["failed"] else 0
