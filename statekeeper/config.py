"""Settings, read the same way on a laptop, in cron and in CI.

Precedence, highest first: a task flag, the process environment, the
``.env`` file next to ``tasks.py`` (found from any working directory),
then the defaults below.  Every value is validated before any AWS or Pulumi
call, so a bad setting costs nothing and changes nothing.

This module must stay cheap to import: ``inv --list`` loads ``tasks.py``,
and neither boto3 nor pulumi may be imported on that path.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from statekeeper.errors import ConfigError

DEFAULT_BUCKET = "rocketseat-pulumi-state"
DEFAULT_REGION = "us-east-1"
DEFAULT_STACKS = ("staging",)

# Every variable the workspace reads, with its meaning.  `.env.example`
# documents the same names, and a test keeps the two (and the GitHub
# workflows) in step.
VARIABLES: dict[str, str] = {
    "AWS_REGION": "AWS region of the state bucket (default us-east-1)",
    "AWS_DEFAULT_REGION": "read when AWS_REGION is unset",
    "AWS_ENDPOINT_URL": "S3-compatible endpoint (MinIO, R2, the sandbox)",
    "AWS_PROFILE": "named AWS profile for credentials",
    "AWS_ACCESS_KEY_ID": "static credentials (CI fallback to OIDC)",
    "AWS_SECRET_ACCESS_KEY": "static credentials (CI fallback to OIDC)",
    "AWS_SESSION_TOKEN": "temporary credentials",
    "STATE_BUCKET": "name of the S3 bucket holding Pulumi state",
    "STATE_PREFIX": "optional folder inside the bucket for the state",
    "STATE_KMS_KEY_ID": "KMS key for bucket encryption (else SSE-S3)",
    "STATE_NONCURRENT_DAYS": "days before old object versions expire",
    "PULUMI_BACKEND_URL": "backend URL; derived from the above when unset",
    "PULUMI_CONFIG_PASSPHRASE": "passphrase of the passphrase provider",
    "PULUMI_CONFIG_PASSPHRASE_FILE": "file holding that passphrase",
    "PULUMI_SECRETS_PROVIDER": "passphrase (default) or awskms://...",
    "SOURCE_PULUMI_CONFIG_PASSPHRASE": "inv migrate: the source's passphrase",
    "SOURCE_PULUMI_CONFIG_PASSPHRASE_FILE": "inv migrate: file holding it",
    "PULUMI_STACKS": "comma-separated stacks to create (default staging)",
    "PULUMI_PROJECT_DIR": "Pulumi project directory (default stacks/)",
    "BACKUP_DEST": "where inv backup writes: s3://bucket/prefix or a path",
    "BACKUP_KEEP": "snapshots to keep (0 keeps all)",
    "BACKUP_KEEP_DAYS": "days of snapshots to keep (0 keeps all)",
}

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BAD_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BAD_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3",
                        "--table-s3")
_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")
_STACK_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9!_.*'()/-]*$")


def workspace_root() -> Path:
    """The folder holding ``tasks.py``: where ``.env`` and ``.tools`` live."""
    return Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Settings:
    """Everything a task needs to reach the state backend."""

    workspace: Path
    region: str
    bucket: str
    prefix: str
    endpoint_url: str | None
    backend_url: str
    secrets_provider: str
    stacks: tuple[str, ...]
    kms_key_id: str | None
    noncurrent_days: int
    project_dir: Path
    backup_dest: str | None
    backup_keep: int
    backup_keep_days: int
    sandbox: bool
    # The merged environment (process over `.env` over sandbox defaults);
    # it holds secrets, so it is never printed.
    environ: Mapping[str, str] = field(repr=False)

    @property
    def state_root(self) -> str:
        """Key prefix of the Pulumi state in the bucket, ending in '/'."""
        base = f"{self.prefix}/" if self.prefix else ""
        return f"{base}.pulumi/"

    @property
    def uses_plain_http(self) -> bool:
        return bool(self.endpoint_url and
                    self.endpoint_url.startswith("http://"))

    def with_stacks(self, stacks: tuple[str, ...]) -> Settings:
        for name in stacks:
            _check_stack(name, "--stack")
        return replace(self, stacks=stacks)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a dotenv file, refusing any line python-dotenv cannot read.

    python-dotenv only warns about a malformed line and goes on, which would
    leave a setting silently unset.  The offending line is named by number
    only: it may hold a secret.
    """
    if not path.is_file():
        return {}
    import io

    from dotenv.parser import parse_stream

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read {path}: {exc.__class__.__name__}",
            "make it a readable UTF-8 text file",
        ) from None
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            line = binding.original.line
            raise ConfigError(
                f"{path} line {line} is not KEY=VALUE",
                "fix or remove that line (quote values with spaces or #)",
            )
        if binding.key is not None:
            values[binding.key] = binding.value or ""
    return values


def merged_environ(
    workspace: Path, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The process environment over ``.env`` over the sandbox's defaults."""
    from statekeeper import sandbox

    process = dict(os.environ if environ is None else environ)
    merged = read_env_file(workspace / ".env")
    merged.update(process)
    endpoint = sandbox.running_endpoint(workspace)
    if endpoint and not merged.get("AWS_ENDPOINT_URL"):
        merged.update(sandbox.defaults(workspace, endpoint, merged))
    return merged


def load(
    overrides: Mapping[str, str | None] | None = None,
    *,
    workspace: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build validated settings; ``overrides`` are task flags by variable."""
    workspace = workspace or workspace_root()
    env = merged_environ(workspace, environ)
    for key, value in (overrides or {}).items():
        if value is not None:
            env[key] = value

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    sandbox_on = env.get("STATEKEEPER_SANDBOX") == "1"
    endpoint = get("AWS_ENDPOINT_URL")
    if endpoint:
        endpoint = _check_endpoint(endpoint)
    region = get("AWS_REGION") or get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    _check_region(region, custom_endpoint=bool(endpoint))

    bucket_var = get("STATE_BUCKET")
    prefix = (get("STATE_PREFIX") or "").strip("/")
    backend_url = get("PULUMI_BACKEND_URL")
    if backend_url:
        url_bucket, url_prefix = _parse_s3_url(backend_url)
        if bucket_var and bucket_var != url_bucket:
            raise ConfigError(
                f"PULUMI_BACKEND_URL names bucket '{url_bucket}' but "
                f"STATE_BUCKET is '{bucket_var}'",
                "make them agree, or unset PULUMI_BACKEND_URL to derive it",
            )
        if get("STATE_PREFIX") and url_prefix != prefix:
            raise ConfigError(
                f"PULUMI_BACKEND_URL has prefix '{url_prefix}' but "
                f"STATE_PREFIX is '{prefix}'",
                "make them agree, or unset PULUMI_BACKEND_URL to derive it",
            )
        bucket, prefix = url_bucket, url_prefix
    else:
        bucket = bucket_var or DEFAULT_BUCKET
    check_bucket_name(bucket, "STATE_BUCKET")
    if not _PREFIX_RE.match(prefix) or "//" in prefix or ".." in prefix:
        raise ConfigError(
            f"STATE_PREFIX '{prefix}' is not a plain S3 key prefix",
            "use letters, digits and / - _ . only",
        )
    if not backend_url:
        backend_url = build_backend_url(bucket, prefix, region, endpoint)

    provider = get("PULUMI_SECRETS_PROVIDER") or "passphrase"
    if provider != "passphrase" and not provider.startswith("awskms://"):
        raise ConfigError(
            f"PULUMI_SECRETS_PROVIDER '{provider}' is not supported",
            "use 'passphrase' or an awskms:// key URL",
        )
    passphrase_file = get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if passphrase_file and "PULUMI_CONFIG_PASSPHRASE" not in env:
        path = Path(passphrase_file).expanduser()
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(
                f"PULUMI_CONFIG_PASSPHRASE_FILE {path} is not a readable file",
                "point it at the file holding the passphrase",
            )

    stacks = tuple(
        s.strip() for s in (get("PULUMI_STACKS") or "").split(",")
        if s.strip()
    ) or DEFAULT_STACKS
    for name in stacks:
        _check_stack(name, "PULUMI_STACKS")

    project_dir = Path(get("PULUMI_PROJECT_DIR") or workspace / "stacks")
    if not project_dir.is_absolute():
        project_dir = workspace / project_dir

    return Settings(
        workspace=workspace,
        region=region,
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint,
        backend_url=backend_url,
        secrets_provider=provider,
        stacks=stacks,
        kms_key_id=get("STATE_KMS_KEY_ID"),
        noncurrent_days=_int(get, "STATE_NONCURRENT_DAYS", 90, minimum=1),
        project_dir=project_dir,
        backup_dest=get("BACKUP_DEST"),
        backup_keep=_int(get, "BACKUP_KEEP", 14, minimum=0),
        backup_keep_days=_int(get, "BACKUP_KEEP_DAYS", 0, minimum=0),
        sandbox=sandbox_on,
        environ=env,
    )


def build_backend_url(
    bucket: str, prefix: str, region: str, endpoint: str | None
) -> str:
    """The ``s3://`` URL the Pulumi CLI (AWS SDK for Go v2) understands."""
    url = f"s3://{bucket}" + (f"/{prefix}" if prefix else "")
    query = f"region={region}"
    if endpoint:
        query += f"&endpoint={quote(endpoint, safe='')}&use_path_style=true"
    return f"{url}?{query}"


def _parse_s3_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(
            f"PULUMI_BACKEND_URL '{_without_query(url)}' is not an s3:// URL",
            "use s3://BUCKET[/PREFIX][?region=...], or unset it to derive it",
        )
    for key in parse_qs(parts.query):
        if key.lower() in {"secret", "secret_access_key", "password"}:
            raise ConfigError(
                "PULUMI_BACKEND_URL carries a secret in its query",
                "pass credentials through AWS_* variables instead",
            )
    return parts.netloc, parts.path.strip("/")


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]


def check_bucket_name(name: str, source: str) -> None:
    """Apply the S3 general-purpose bucket naming rules."""
    problem = None
    if not 3 <= len(name) <= 63:
        problem = "must be 3 to 63 characters long"
    elif not _BUCKET_RE.match(name):
        problem = ("may hold only lowercase letters, digits, dots and "
                   "hyphens, and must start and end with a letter or digit")
    elif ".." in name or ".-" in name or "-." in name:
        problem = "must not have two dots, or a dot next to a hyphen"
    elif _is_ip(name):
        problem = "must not look like an IP address"
    elif name.startswith(_BAD_BUCKET_PREFIXES):
        problem = "uses a prefix AWS reserves"
    elif name.endswith(_BAD_BUCKET_SUFFIXES):
        problem = "uses a suffix AWS reserves"
    if problem:
        raise ConfigError(
            f"{source} '{name}' is not a valid S3 bucket name: it {problem}",
            "choose a name like 'acme-pulumi-state'",
        )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def _check_region(region: str, *, custom_endpoint: bool) -> None:
    if not _REGION_RE.match(region):
        raise ConfigError(
            f"AWS_REGION '{region}' is not a region name",
            "use a name like 'us-east-1'",
        )
    if custom_endpoint:
        return
    known = _known_regions()
    if known and region not in known:
        raise ConfigError(
            f"AWS_REGION '{region}' is not an AWS region",
            "use one of the regions AWS lists (for example us-east-1), or "
            "set AWS_ENDPOINT_URL for an S3-compatible store",
        )


def _known_regions() -> set[str]:
    """Regions botocore's endpoint data knows for S3 (read lazily)."""
    import json

    import botocore

    data = Path(botocore.__file__).parent / "data" / "endpoints.json"
    try:
        doc = json.loads(data.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    regions: set[str] = set()
    for partition in doc.get("partitions", []):
        regions.update(partition.get("regions", {}))
    return regions


def _check_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigError(
            f"AWS_ENDPOINT_URL '{endpoint}' is not an http(s) URL",
            "use a URL like http://127.0.0.1:5000",
        )
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ConfigError(
            f"AWS_ENDPOINT_URL '{endpoint}' has a malformed port",
            "use a URL like http://127.0.0.1:5000",
        ) from None
    return endpoint.rstrip("/")


def _check_stack(name: str, source: str) -> None:
    if not _STACK_RE.match(name):
        raise ConfigError(
            f"{source} stack name '{name}' is not valid",
            "use letters, digits, '-', '_' and '.' only",
        )


def _int(get, name: str, default: int, *, minimum: int) -> int:
    raw = get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(
            f"{name} '{raw}' is not a whole number of at least {minimum}",
            f"set {name} to a number such as {default or minimum}",
        )
    return value
