"""The Pulumi project on disk: its ``Pulumi.yaml``, name and stack config
files.  Every task that works on a project finds it through here, so a
folder without a project fails the same way everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from statekeeper.errors import ConfigError

PROJECT_FILES = ("Pulumi.yaml", "Pulumi.yml")


def project_file(project_dir: Path) -> Path:
    """The project's ``Pulumi.yaml``, or a ConfigError naming the folder."""
    for name in PROJECT_FILES:
        path = project_dir / name
        if path.is_file():
            return path
    raise ConfigError(
        f"no Pulumi.yaml in {project_dir}",
        "pass --project DIR (a Pulumi project) or set PULUMI_PROJECT_DIR",
    )


def document(project_dir: Path) -> dict[str, Any]:
    """The parsed project file; it must at least have a ``name``."""
    import yaml

    path = project_file(project_dir)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raise ConfigError(f"{path} is not readable YAML",
                          "fix the project file") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
        raise ConfigError(f"{path} has no project name",
                          "add 'name: <project>' to it")
    return doc


def name(project_dir: Path) -> str:
    """The ``name:`` of the project (its folder under ``.pulumi/stacks``)."""
    return str(document(project_dir)["name"])


def stack_config_file(project_dir: Path, stack: str) -> Path:
    """Where ``Pulumi.<stack>.yaml`` lives (``stackConfigDir`` honoured)."""
    folder = document(project_dir).get("stackConfigDir") or "."
    return project_dir / str(folder) / f"Pulumi.{stack}.yaml"
