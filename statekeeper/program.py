"""The ``statekeeper`` command: the workspace's invoke tasks, runnable from
any directory (cron's ``/`` included) without ``--search-root``.

``.venv/bin/statekeeper backup`` is ``cd WORKSPACE && .venv/bin/inv
backup``: the same tasks, flags, help and exit codes, loaded from the
``tasks.py`` that sits next to this package.
"""

from __future__ import annotations

import importlib.util
import sys

from invoke import Program

from statekeeper import __version__
from statekeeper.config import workspace_root


def load_namespace():
    path = workspace_root() / "tasks.py"
    spec = importlib.util.spec_from_file_location("tasks", path)
    if spec is None or spec.loader is None:
        sys.exit(f"error: cannot load {path}; run from a full checkout")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ns


def main() -> None:
    Program(namespace=load_namespace(), version=__version__,
            binary_names=["statekeeper"]).run()
