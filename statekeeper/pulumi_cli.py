"""The one place that runs the Pulumi CLI.

It builds the CLI's environment (backend URL, secrets, endpoint, a PATH with
the workspace's own ``.tools/bin`` first), never lets a secret reach the
output, runs every command non-interactively (cron and CI have no terminal),
and turns a failure into a :class:`PulumiError` carrying the CLI's own
message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from statekeeper.errors import ConfigError, PulumiError

if TYPE_CHECKING:
    from statekeeper.config import Settings

# The version scripts/install-pulumi.sh installs, and the oldest one whose
# s3:// URLs take `endpoint=` and `use_path_style=` (AWS SDK for Go v2).
PINNED_VERSION = "3.260.0"
MINIMUM_VERSION = (3, 245, 0)

_SECRET_VARIABLES = ("PULUMI_CONFIG_PASSPHRASE", "AWS_SECRET_ACCESS_KEY",
                     "AWS_SESSION_TOKEN", "PULUMI_ACCESS_TOKEN")


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def json(self) -> Any:
        try:
            return json.loads(self.stdout or "null")
        except ValueError:
            raise PulumiError(
                f"'pulumi {' '.join(self.args[:2])}' printed no JSON",
                "check the Pulumi CLI version (inv doctor)",
            ) from None


def tools_bin(workspace: Path) -> Path:
    return workspace / ".tools" / "bin"


def find_binary(settings: Settings) -> str | None:
    """The workspace's pinned CLI first, then one on PATH."""
    local = tools_bin(settings.workspace) / "pulumi"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("pulumi", path=settings.environ.get("PATH"))


def parse_version(text: str) -> tuple[int, int, int] | None:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(p) for p in match.groups()) if match else None


class Pulumi:
    """Runs ``pulumi`` against one backend, from one project directory."""

    def __init__(
        self, settings: Settings, *, cwd: Path | None = None,
        backend_url: str | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.cwd = cwd
        self.backend_url = backend_url or settings.backend_url
        self._extra_env = environ or {}
        self._binary: str | None = None

    @property
    def binary(self) -> str:
        if self._binary is None:
            found = find_binary(self.settings)
            if not found:
                raise PulumiError(
                    "the Pulumi CLI is not installed",
                    "run scripts/install-pulumi.sh (scripts/setup.sh runs "
                    "it)",
                )
            self._binary = found
        return self._binary

    def env(self) -> dict[str, str]:
        env = dict(self.settings.environ)
        env.update(self._extra_env)
        # The workspace's CLI first, then this interpreter's bin folder: the
        # Python language host runs the first `python3` on PATH, which must
        # be one with the pulumi SDK (scripts/install-pulumi.sh says why).
        path = env.get("PATH", os.defpath)
        env["PATH"] = (f"{tools_bin(self.settings.workspace)}:"
                       f"{Path(sys.executable).parent}:{path}")
        env["PULUMI_BACKEND_URL"] = self.backend_url
        env["PULUMI_SKIP_UPDATE_CHECK"] = "true"
        env.setdefault("PULUMI_DIY_BACKEND_PARALLEL", "16")
        # S3-compatible stores (MinIO, R2, moto) often return no checksums;
        # the AWS SDK then warns on every read.  Checksums stay on where
        # the service requires them.
        env.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
        env.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
        # The CLI reads AWS_REGION; keep it in step with the settings.
        env["AWS_REGION"] = self.settings.region
        env.setdefault("AWS_DEFAULT_REGION", self.settings.region)
        # Never let the Pulumi Cloud token leak into a diy backend session.
        if self.backend_url.startswith(("s3://", "file://")):
            env.pop("PULUMI_ACCESS_TOKEN", None)
        return env

    def secret_values(self) -> list[str]:
        env = self.env()
        values = [env[k] for k in _SECRET_VARIABLES if env.get(k)]
        path = env.get("PULUMI_CONFIG_PASSPHRASE_FILE")
        if path and "PULUMI_CONFIG_PASSPHRASE" not in env:
            try:
                values.append(Path(path).expanduser().read_text().strip())
            except OSError:
                pass
        return [v for v in values if len(v) >= 4]

    def redact(self, text: str) -> str:
        for value in self.secret_values():
            text = text.replace(value, "***")
        return text

    def require_secrets_provider(self) -> None:
        """Fail fast where the CLI would otherwise prompt or hang."""
        if self.settings.secrets_provider != "passphrase":
            return
        env = self.env()
        if ("PULUMI_CONFIG_PASSPHRASE" in env
                or env.get("PULUMI_CONFIG_PASSPHRASE_FILE")):
            return
        raise ConfigError(
            "no Pulumi passphrase: PULUMI_CONFIG_PASSPHRASE and "
            "PULUMI_CONFIG_PASSPHRASE_FILE are both unset",
            "set one of them (in .env or the environment), or set "
            "PULUMI_SECRETS_PROVIDER to an awskms:// key",
        )

    def run(
        self, *args: str, check: bool = True, capture: bool = True,
        input: str | None = None, secrets: bool = False,
        cwd: Path | None = None, timeout: float | None = None,
    ) -> Result:
        """Run ``pulumi ARGS``; ``secrets`` asks for a provider first.

        With ``capture=False`` the CLI's output goes straight to the
        terminal (the CLI masks secret values itself); errors still come
        back as a :class:`PulumiError`.
        """
        if secrets:
            self.require_secrets_provider()
        command = [self.binary, *args, "--non-interactive"]
        workdir = cwd or self.cwd
        try:
            done = subprocess.run(
                command, cwd=workdir, env=self.env(), text=True,
                input=input if input is not None else "",
                stdout=subprocess.PIPE if capture else None,
                stderr=subprocess.PIPE, timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise PulumiError(
                f"'pulumi {args[0]}' did not finish in {timeout:.0f} s",
                "check the backend is reachable (inv doctor)",
            ) from None
        result = Result(tuple(args), done.returncode,
                        self.redact(done.stdout or ""),
                        self.redact(done.stderr or ""))
        if check and not result.ok:
            raise self.failure(result)
        return result

    def json(self, *args: str, **kwargs: Any) -> Any:
        return self.run(*args, "--json", **kwargs).json()

    def failure(self, result: Result) -> PulumiError:
        what = " ".join(a for a in result.args[:2] if not a.startswith("-"))
        return PulumiError(f"pulumi {what} failed: {cli_message(result)}")

    def version(self) -> str:
        out = self.run("version", check=True).stdout.strip()
        return out.lstrip("v")

    def check_version(self) -> str:
        version = self.version()
        parsed = parse_version(version)
        if parsed is None or parsed < MINIMUM_VERSION:
            minimum = ".".join(map(str, MINIMUM_VERSION))
            raise PulumiError(
                f"Pulumi CLI {version} is older than {minimum}",
                "run scripts/install-pulumi.sh to install "
                f"{PINNED_VERSION} into .tools/bin",
            )
        return version

    def stacks(self, *, all_projects: bool = False) -> list[dict[str, Any]]:
        """``pulumi stack ls --json`` for this project (or every project)."""
        args = ["stack", "ls"] + (["--all"] if all_projects else [])
        return self.json(*args) or []


def cli_message(result: Result) -> str:
    """The CLI's own explanation: its ``error:`` lines, else its last line."""
    lines = [ln.strip() for ln in (result.stderr + "\n" + result.stdout)
             .splitlines() if ln.strip()]
    errors = [ln[len("error:"):].strip() for ln in lines
              if ln.lower().startswith("error:")]
    text = " ".join(errors) if errors else (lines[-1] if lines else
                                            f"exit {result.returncode}")
    return re.sub(r"\s+", " ", text)[:500]
