"""What the fault tools read about processes from /proc (Linux): trees, sessions and memory.

Why /proc rather than psutil: these are four fields of two files, and the fault tools must not
need a dependency the product does not have. Every function returns None (or nothing) for a
process that has gone, because the processes watched here are being killed on purpose.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may hold spaces and parens)."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return text[text.rfind(")") + 2:].split()


def _all_pids() -> list[int]:
    return [int(p.name) for p in _PROC.iterdir() if p.name.isdigit()]


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...), found by parent id."""
    parents: dict[int, list[int]] = {}
    for other in _all_pids():
        fields = _stat_fields(other)
        if fields is not None and fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(other)
    found: list[int] = []
    pending = [pid]
    while pending:
        children = parents.get(pending.pop(), [])
        found.extend(children)
        pending.extend(children)
    return found


def session_members(session: int) -> list[int]:
    """Live (non-zombie) processes of a session: what a killed `start_new_session` child left."""
    members = []
    for other in _all_pids():
        fields = _stat_fields(other)
        if fields is not None and fields[0] != "Z" and int(fields[3]) == session:
            members.append(other)
    return members


def _status_kb(pid: int, field: str) -> int | None:
    try:
        lines = (_PROC / str(pid) / "status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def rss_kb(pid: int) -> int | None:
    """Resident memory now."""
    return _status_kb(pid, "VmRSS")


def peak_rss_kb(pid: int) -> int | None:
    """The highest resident memory since start, or since `reset_peak`."""
    return _status_kb(pid, "VmHWM")


def virtual_kb(pid: int) -> int | None:
    return _status_kb(pid, "VmSize")


def reset_peak(pid: int) -> None:
    """Set the peak (VmHWM) back to the current RSS, so that the next peak is one call's."""
    with contextlib.suppress(OSError):
        (_PROC / str(pid) / "clear_refs").write_text("5")


def command_line(pid: int) -> str:
    try:
        return (_PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (0 if it has gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
