"""A local AWS emulator (moto server) on 127.0.0.1, for work without an
account.

``up`` starts it in the background and records its pid and endpoint under
``.sandbox/`` (``STATEKEEPER_SANDBOX_DIR`` moves that folder).  While it runs,
every task that has no ``AWS_ENDPOINT_URL`` of its own talks to it, with
dummy credentials and a generated local passphrase when none are set.
State lives in the server's memory: ``down`` forgets every bucket.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from statekeeper.errors import StatekeeperError
from statekeeper.process import alive as pid_alive

PREFERRED_PORT = 5000


def state_dir(workspace: Path) -> Path:
    override = os.environ.get("STATEKEEPER_SANDBOX_DIR")
    return Path(override) if override else workspace / ".sandbox"


def running_endpoint(workspace: Path) -> str | None:
    """The endpoint of a live sandbox started from this workspace, or None."""
    folder = state_dir(workspace)
    try:
        pid = int((folder / "moto.pid").read_text().strip())
        endpoint = (folder / "endpoint").read_text().strip()
    except (OSError, ValueError):
        return None
    return endpoint if pid_alive(pid) else None


def defaults(
    workspace: Path, endpoint: str, environ: Mapping[str, str]
) -> dict[str, str]:
    """Settings that point a task at the sandbox, without overriding any."""
    values = {
        "AWS_ENDPOINT_URL": endpoint,
        "STATEKEEPER_SANDBOX": "1",
    }
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if not environ.get(key) and not environ.get("AWS_PROFILE"):
            values[key] = "testing"
    passphrase = state_dir(workspace) / "passphrase"
    if ("PULUMI_CONFIG_PASSPHRASE" not in environ
            and "PULUMI_CONFIG_PASSPHRASE_FILE" not in environ
            and passphrase.is_file()):
        values["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(passphrase)
    return values


def up(workspace: Path, port: int = 0) -> tuple[str, bool]:
    """Start the server unless it runs; return (endpoint, started_now)."""
    endpoint = running_endpoint(workspace)
    if endpoint:
        return endpoint, False
    server = _moto_server()
    folder = state_dir(workspace)
    folder.mkdir(parents=True, exist_ok=True)
    _ensure_passphrase(folder / "passphrase")
    port = port or _pick_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = open(folder / "moto.log", "ab")  # noqa: SIM115 - owned by child
    process = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    if not wait_ready(endpoint, process=process):
        process.kill()
        raise StatekeeperError(
            f"the moto server did not start on port {port} "
            f"(see {folder / 'moto.log'})",
            "choose another port with --port",
        )
    (folder / "moto.pid").write_text(f"{process.pid}\n")
    (folder / "endpoint").write_text(f"{endpoint}\n")
    return endpoint, True


def down(workspace: Path) -> bool:
    """Stop the server; return whether one was running."""
    folder = state_dir(workspace)
    try:
        pid = int((folder / "moto.pid").read_text().strip())
    except (OSError, ValueError):
        pid = None
    was_running = pid is not None and pid_alive(pid)
    if was_running:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not pid_alive(pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    for name in ("moto.pid", "endpoint"):
        (folder / name).unlink(missing_ok=True)
    return was_running


def wait_ready(
    endpoint: str, *, process: subprocess.Popen | None = None,
    timeout: float = 30.0,
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/data.json",
                                        timeout=2):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def _moto_server() -> str:
    beside = Path(sys.executable).with_name("moto_server")
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if not found:
        raise StatekeeperError(
            "moto_server is not installed",
            "run scripts/setup.sh (it installs moto[server] into .venv)",
        )
    return found


def _pick_port() -> int:
    for port in (PREFERRED_PORT, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise StatekeeperError("no free TCP port on 127.0.0.1",
                           "pass one with --port")


def _ensure_passphrase(path: Path) -> None:
    if path.exists():
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(24))

