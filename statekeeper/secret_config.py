"""Set an encrypted config value of a stack without it touching argv.

A value given as a command-line argument lands in shell history, ``ps``
output and CI logs, so the task takes only the key.  The value comes from
standard input when that is a pipe or a file (CI, scripts) or from a prompt
that does not echo (a person at a terminal), and it reaches
``pulumi config set --secret`` through the CLI's standard input too.  It is
never printed.
"""

from __future__ import annotations

import getpass
import re
import sys
from typing import TYPE_CHECKING, TextIO

from statekeeper.deploy import cli_for, pick_stack, preflight
from statekeeper.errors import ConfigError, PulumiError

if TYPE_CHECKING:
    from statekeeper.config import Settings

# A config key: `name` or `namespace:name`; `--path` style keys are not
# offered here.
_KEY_RE = re.compile(r"^([A-Za-z][\w.-]*:)?[A-Za-z_][\w.-]*$")


def check_key(key: str) -> str:
    if "=" in key:
        # Do not echo the text: what follows '=' may be the secret itself.
        raise ConfigError(
            "config.secret takes the key only, not KEY=VALUE",
            "pass the value on standard input or at the prompt",
        )
    if not _KEY_RE.match(key):
        raise ConfigError(
            f"'{key}' is not a config key",
            "use a name like 'apiToken' or 'myproject:apiToken'",
        )
    return key


def read_value(key: str, stdin: TextIO | None = None) -> str:
    """The value from a pipe (one trailing newline dropped) or a prompt."""
    stdin = stdin or sys.stdin
    if stdin.isatty():
        value = getpass.getpass(f"value for {key} (not echoed): ")
    else:
        value = stdin.read()
        if value.endswith("\r\n"):
            value = value[:-2]
        elif value.endswith("\n"):
            value = value[:-1]
    if not value:
        raise ConfigError(
            f"no value given for {key}",
            "pipe it in (e.g. 'inv config.secret KEY < file') or type it "
            "at the prompt",
        )
    return value


def set_secret(
    settings: Settings, key: str, *, stdin: TextIO | None = None,
    out: TextIO | None = None,
) -> int:
    """Encrypt ``key``'s value into ``Pulumi.<stack>.yaml``."""
    out = out or sys.stdout
    key = check_key(key)
    stack = pick_stack(settings)
    preflight(settings, stack)
    value = read_value(key, stdin)
    pulumi = cli_for(settings)
    done = pulumi.run("config", "set", "--secret", key, "--stack", stack,
                      input=value, secrets=True, check=False)
    if not done.ok:
        message = str(pulumi.failure(done))
        # The CLI has no reason to repeat the value; make sure of it.
        if len(value) >= 4:
            message = message.replace(value, "***")
        raise PulumiError(message)
    print(f"config.secret {stack}: {key} set, encrypted in "
          f"Pulumi.{stack}.yaml", file=out)
    return 0
