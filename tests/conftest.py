"""Shared fixtures: a real moto server over HTTP, a throwaway workspace, and
a way to run the real ``inv`` command line against both.

Nothing here mocks S3 in-process: boto3 in the tests, the tasks and the
Pulumi CLI all talk to the same server on 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from statekeeper import sandbox

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class MotoServer:
    """A moto server process of our own on 127.0.0.1."""

    endpoint: str
    process: subprocess.Popen

    def reset(self) -> None:
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()

    def enforce_iam(self, after: int = 0) -> None:
        """Check callers' IAM policies once ``after`` more requests have
        passed unchecked."""
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=str(after).encode(), method="POST",
            # moto reads the raw body: a form content type would empty it.
            headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(request, timeout=10).close()

    def relax_iam(self) -> None:
        """Stop checking IAM policies (moto's default)."""
        self.enforce_iam(after=10**9)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_moto(env: dict[str, str] | None = None) -> MotoServer:
    port = free_port()
    server = VENV_BIN / "moto_server"
    process = subprocess.Popen(
        [str(server if server.exists() else "moto_server"),
         "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    endpoint = f"http://127.0.0.1:{port}"
    if not sandbox.wait_ready(endpoint, process=process):
        process.kill()
        pytest.fail(f"moto server did not start on {endpoint}")
    return MotoServer(endpoint, process)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    server = start_moto()
    yield server
    server.stop()


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """The shared server, emptied before the test."""
    moto_server.reset()
    return moto_server


@dataclass
class Workspace:
    """A throwaway copy of the workspace: its own tasks.py and .env."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    def write_env_file(self, text: str) -> None:
        (self.root / ".env").write_text(text)

    def inv(self, *args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None, input: str | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        """Run the real ``inv`` command line; never raises on exit code."""
        return subprocess.run(
            [str(VENV_BIN / "inv"), "--search-root", str(self.root), *args],
            cwd=cwd or self.root, env=env if env is not None else self.env,
            input=input if input is not None else "", text=True,
            capture_output=True, timeout=timeout,
        )

    def pulumi(self, *args: str, cwd: Path | None = None,
               check: bool = True) -> subprocess.CompletedProcess:
        """Run the workspace's Pulumi CLI with the test environment."""
        env = dict(self.env)
        env["PATH"] = f"{self.root / '.tools' / 'bin'}:{env['PATH']}"
        env["PULUMI_SKIP_UPDATE_CHECK"] = "true"
        done = subprocess.run(
            ["pulumi", *args, "--non-interactive"], cwd=cwd or self.root,
            env=env, text=True, capture_output=True, timeout=600,
        )
        if check and done.returncode != 0:
            pytest.fail(f"pulumi {' '.join(args)} failed: {done.stderr}")
        return done

    def settings(self, **overrides: str):
        from statekeeper import config

        return config.load(overrides, workspace=self.root, environ=self.env)


def base_env(home: Path) -> dict[str, str]:
    """What a CI runner would set: nothing from the developer's shell."""
    return {
        "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PULUMI_HOME": str(home / ".pulumi"),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "STATEKEEPER_SANDBOX_DIR": str(home / "no-sandbox"),
        # Never ask an instance metadata service (not 127.0.0.1) for keys.
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A workspace copy with no .env and no AWS settings at all."""
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copy(REPO / "tasks.py", root / "tasks.py")
    for name in (".tools", "stacks"):
        if (REPO / name).exists():
            (root / name).symlink_to(REPO / name)
    home = tmp_path / "home"
    home.mkdir()
    return Workspace(root, base_env(home))


@pytest.fixture
def ws(workspace: Workspace, moto: MotoServer) -> Workspace:
    """A workspace pointed at the moto server, with a passphrase."""
    workspace.env.update({
        "AWS_ENDPOINT_URL": moto.endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_REGION": "us-east-1",
        "STATE_BUCKET": "test-pulumi-state",
        "PULUMI_CONFIG_PASSPHRASE": "pass-" + secrets.token_hex(8),
    })
    return workspace


@pytest.fixture
def s3(ws: Workspace):
    """A boto3 S3 client on the same server as ``ws``."""
    return boto3.client(
        "s3", endpoint_url=ws.env["AWS_ENDPOINT_URL"],
        region_name="us-east-1", aws_access_key_id="testing",
        aws_secret_access_key="testing-secret-key",
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture(scope="session")
def pulumi_cli() -> Path:
    """The pinned Pulumi CLI; its absence fails the test, never skips it."""
    binary = REPO / ".tools" / "bin" / "pulumi"
    if not binary.exists():
        pytest.fail("the Pulumi CLI is missing: run scripts/install-pulumi.sh")
    return binary


def assert_clean_failure(done: subprocess.CompletedProcess,
                         *needles: str) -> str:
    """A non-zero exit with one error line that names the problem."""
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]

