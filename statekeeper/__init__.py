"""Keep Pulumi state in your own S3 bucket.

The package does the work; ``tasks.py`` at the top of the workspace only
parses arguments and turns :class:`statekeeper.errors.StatekeeperError`
into a one-line message and an exit code.
"""

TOOL_NAME = "statekeeper"
__version__ = "0.1.0"
