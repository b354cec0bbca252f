"""Stack names: which exist, and what a mistyped one probably meant."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from statekeeper.errors import ConfigError

if TYPE_CHECKING:
    from statekeeper.pulumi_cli import Pulumi


def short_name(qualified: str) -> str:
    """'organization/project/staging' -> 'staging'."""
    return qualified.rsplit("/", 1)[-1]


def existing(pulumi: Pulumi) -> list[str]:
    """Short names of the project's stacks on the backend."""
    return [short_name(s["name"]) for s in pulumi.stacks()]


def closest(name: str, names: list[str], n: int = 3) -> list[str]:
    """Existing names close to ``name`` (prefix matches count: stg ->
    staging)."""
    scored = difflib.get_close_matches(name, names, n=n, cutoff=0.4)
    for candidate in names:
        if candidate not in scored and _is_abbreviation(name, candidate):
            scored.append(candidate)
    return scored[:n]


def _is_abbreviation(short: str, long: str) -> bool:
    """Whether ``short``'s letters appear in order in ``long`` (stg)."""
    letters = iter(long.lower())
    return (short[:1].lower() == long[:1].lower()
            and all(ch in letters for ch in short.lower()))


def require(pulumi: Pulumi, name: str) -> None:
    """Raise a ConfigError naming the closest stacks if ``name`` is
    unknown; never create it."""
    names = existing(pulumi)
    if name in names:
        return
    raise ConfigError(*missing_stack_message(name, names))


def missing_stack_message(name: str, names: list[str]) -> tuple[str, str]:
    guesses = closest(name, names)
    problem = f"stack '{name}' does not exist"
    if guesses:
        fix = "did you mean " + " or ".join(f"'{g}'" for g in guesses) + "?"
    elif names:
        fix = "existing stacks: " + ", ".join(sorted(names))
    else:
        fix = "no stacks exist yet: run 'inv bootstrap' to create them"
    return problem, fix
