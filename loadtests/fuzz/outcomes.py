"""What happened to one fuzz input, and the tally a run reports.

Outcome classes, from fine to broken:

- `ok`: accepted and answered;
- `invalid_argument`: refused with a message (an expected refusal), counted by message kind;
- `resource_exhausted`: refused for capacity (a limit on cost, not on the input's validity);
- `unknown`: the server answered UNKNOWN or another status no bad input should cause;
- `traceback`: an unexpected exception in-process, or a traceback printed by the CLI;
- `hang`: the per-input hang guard fired (the child was killed, or the call's deadline passed);
- `crash`: the process died (a signal, e.g. a segfault in a decoder);
- `memory`: the input took more memory than the per-input budget (or hit the hard cap);
- `partial`: an import stored some of a file but not all, or left the store failing its check;
- `unlocated`: an import refused a file without naming the file and line of what was wrong;
- `not_refused`: one of the issue's recipe inputs was accepted where the issue says it must be
  refused (a limit that exists but does not apply on that path).

The first three keep the guarantee; every other class breaks it, and makes the command exit 1.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

OK = "ok"
INVALID_ARGUMENT = "invalid_argument"
RESOURCE_EXHAUSTED = "resource_exhausted"
UNKNOWN = "unknown"
TRACEBACK = "traceback"
HANG = "hang"
CRASH = "crash"
MEMORY = "memory"
PARTIAL = "partial"
NOT_REFUSED = "not_refused"
UNLOCATED = "unlocated"
ACCEPTABLE = frozenset({OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED})
OUTCOMES = (OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNKNOWN, TRACEBACK, HANG, CRASH, MEMORY,
            PARTIAL, UNLOCATED, NOT_REFUSED)

_SHOWN_FAILURES = 200

# Message kinds for refusals that arrive as text only (gRPC details, CLI errors): the first
# pattern that matches names the kind. In-process refusals carry their `reason` instead.
_MESSAGE_KINDS = (
    ("too_large", re.compile(r"exceeds the limit|too large|too many|longer than|limit of", re.I)),
    ("too_small", re.compile(r"smaller than", re.I)),
    ("unsupported_format", re.compile(r"not a supported image format", re.I)),
    ("truncated", re.compile(r"truncated", re.I)),
    ("corrupt", re.compile(r"corrupt|cannot read image|cannot decode|decoder", re.I)),
    ("invalid_hash", re.compile(r"hex|hash|algorithm", re.I)),
    ("invalid_json", re.compile(r"JSON|metadata|nest|depth", re.I)),
    ("invalid_text", re.compile(r"UTF-8|unicode|surrogate|NUL|character", re.I)),
    ("columns", re.compile(r"column|header|malformed", re.I)),
)


def message_kind(message: str) -> str:
    for kind, pattern in _MESSAGE_KINDS:
        if pattern.search(message):
            return kind
    return "other"


def short(text: str, limit: int = 300) -> str:
    """A message as reports show it: one line, bounded (hostile inputs echo hostile text)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + "…"


@dataclass
class Result:
    """One input through one path."""

    input: str  # the generated input's name (generator, format, mutation, seed index)
    path: str  # which code path: scan / hash (decoders, server), import, scan-hashes
    outcome: str
    kind: str = ""  # the refusal's kind, or the exception's type
    message: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_mb: float = 0.0  # memory above the process's baseline while this input ran

    @property
    def failed(self) -> bool:
        return self.outcome not in ACCEPTABLE

    def as_dict(self) -> dict[str, Any]:
        return {"input": self.input, "path": self.path, "outcome": self.outcome,
                "kind": self.kind, "message": self.message, "seconds": round(self.seconds, 3),
                "peak_mb": round(self.peak_mb, 1)}


@dataclass
class Tally:
    """Counts by outcome (and refusal kind), the worst time and memory, and every failure."""

    mode: str
    counts: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    failure_kinds: Counter[str] = field(default_factory=Counter)
    failures: list[Result] = field(default_factory=list)
    slowest: Result | None = None
    largest: Result | None = None
    runs: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, result: Result, *, must_refuse: bool = False) -> None:
        if must_refuse and result.outcome == OK:
            result.outcome, result.kind = NOT_REFUSED, "accepted"
            result.message = "the issue names this input as one to refuse; it was accepted"
        self.runs += 1
        self.counts[result.outcome] += 1
        if result.outcome == INVALID_ARGUMENT:
            self.kinds[f"{result.path}:{result.kind}"] += 1
        if result.failed:
            self.failure_kinds[f"{result.path}:{result.outcome}:{result.kind}"] += 1
            if len(self.failures) < _SHOWN_FAILURES:
                self.failures.append(result)
        if self.slowest is None or result.seconds > self.slowest.seconds:
            self.slowest = result
        if self.largest is None or result.peak_mb > self.largest.peak_mb:
            self.largest = result

    def merge(self, other: Tally) -> None:
        """Fold in a tally of the same mode run elsewhere (another job of a `--jobs` run)."""
        self.runs += other.runs
        self.counts.update(other.counts)
        self.kinds.update(other.kinds)
        self.failure_kinds.update(other.failure_kinds)
        self.failures.extend(other.failures[:_SHOWN_FAILURES - len(self.failures)])
        self.notes.extend(other.notes)
        for mine, theirs, key in ((self.slowest, other.slowest, "seconds"),
                                  (self.largest, other.largest, "peak_mb")):
            if theirs is not None and (mine is None or getattr(theirs, key) > getattr(mine, key)):
                setattr(self, "slowest" if key == "seconds" else "largest", theirs)

    @property
    def failed(self) -> int:
        return sum(n for outcome, n in self.counts.items() if outcome not in ACCEPTABLE)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "runs": self.runs,
            "counts": {o: self.counts.get(o, 0) for o in OUTCOMES},
            "failed": self.failed,
            "refusal_kinds": dict(sorted(self.kinds.items())),
            "failure_kinds": dict(sorted(self.failure_kinds.items())),
            "worst_seconds": self.slowest.as_dict() if self.slowest else None,
            "worst_peak_mb": self.largest.as_dict() if self.largest else None,
            "failures": [f.as_dict() for f in self.failures],
            "notes": self.notes,
        }

    def table(self) -> str:
        counts = "  ".join(f"{o} {self.counts[o]}" for o in OUTCOMES if self.counts.get(o))
        lines = [f"{self.mode}: {self.runs} runs: {counts or 'nothing ran'}"]
        if self.slowest is not None:
            lines.append(f"  worst time {self.slowest.seconds:.2f} s ({self.slowest.input}, "
                         f"{self.slowest.path})")
        if self.largest is not None and self.largest.peak_mb:
            lines.append(f"  worst memory {self.largest.peak_mb:.0f} MB ({self.largest.input}, "
                         f"{self.largest.path})")
        for kind, count in sorted(self.failure_kinds.items()):
            lines.append(f"  FAILED {count:>5} × {kind}")
        for failure in self.failures[:10]:
            lines.append(f"    e.g. {failure.input} [{failure.path}] {failure.outcome}: "
                         f"{short(failure.message, 160)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)
