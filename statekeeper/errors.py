"""Expected failures: each carries one line for the user and an exit code.

Anything that is not a :class:`StatekeeperError` is a bug and keeps its
traceback.
"""


class StatekeeperError(Exception):
    """A failure the user can fix; ``str()`` is the whole message."""

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class ConfigError(StatekeeperError):
    """A setting is missing, malformed or contradicts another one."""

    exit_code = 2


class AwsError(StatekeeperError):
    """AWS (or an S3-compatible store) refused or could not be reached."""


class PulumiError(StatekeeperError):
    """The Pulumi CLI failed or is missing."""


class Refused(StatekeeperError):
    """A safety check stopped an operation that would lose something."""

    exit_code = 3
