"""What a person reads: step lines, warnings and a closing summary.

Results go to stdout, warnings and errors to stderr, so a cron mail or a CI
log shows both and a pipe gets only results.  Counting is kept apart from
printing so the work can be tested without parsing text.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import TextIO


class Report:
    """Prints one line per step and counts the steps by status."""

    def __init__(
        self, out: TextIO | None = None, err: TextIO | None = None,
        *, quiet: bool = False,
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.quiet = quiet
        self.counts: Counter[str] = Counter()

    def step(self, status: str, subject: str, detail: str = "") -> None:
        self.counts[status] += 1
        if not self.quiet:
            tail = f"  ({detail})" if detail else ""
            print(f"{status:>12}  {subject}{tail}", file=self.out)

    def line(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.out)

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=self.err)

    def progress(self, text: str) -> None:
        """A transient line, shown only when stderr is a terminal."""
        if self.err.isatty():
            print(f"\r{text}\x1b[K", end="", file=self.err, flush=True)

    def summary(self, label: str) -> str:
        parts = ", ".join(f"{n} {status}" for status, n in
                          sorted(self.counts.items()))
        text = f"{label}: {parts or 'nothing to do'}"
        print(text, file=self.out)
        return text
