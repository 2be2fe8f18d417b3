"""API keys with roles, stored as SHA-256 hashes only.

A key is 32 random bytes (256 bits), so a plain SHA-256 is a safe verifier: there is nothing to
brute-force, and lookups stay O(1) per call. The key itself is shown once, when it is made, and
never written to a log or a file by the server.

Roles: `scan` may call ScanService; `admin` may call AdminService and ScanService.

A key may be scoped to banks (`banks`): it then sees and matches those banks only, as if no other
bank existed (see `hashsvc.server.scope`). A key without `banks` sees every bank.

    [[keys]]
    name = "platform-a"
    roles = ["scan"]
    banks = ["ncmec", "benign-stock"]   # optional
    sha256 = "9f86d081884c7d65…"
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from hashsvc.errors import AlreadyExistsError, HashsvcError, NotFoundError
from hashsvc.store import validate_name

ROLES = ("scan", "admin")
KEY_PREFIX = "hsk_"


@dataclass(frozen=True)
class ApiKey:
    name: str
    roles: frozenset[str]
    sha256: str
    banks: frozenset[str] | None = None  # None: every bank

    def allows(self, role: str) -> bool:
        return role in self.roles or "admin" in self.roles


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    """The keys a server accepts, looked up by the hash of the presented key."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._by_digest = {key.sha256: key for key in keys}

    def __len__(self) -> int:
        return len(self._by_digest)

    def identify(self, presented: str) -> ApiKey | None:
        candidate = digest(presented)
        key = self._by_digest.get(candidate)
        # The dict lookup already found it; compare_digest keeps the final check constant-time.
        if key is not None and hmac.compare_digest(key.sha256, candidate):
            return key
        return None

    @classmethod
    def load(cls, path: Path) -> KeyRing:
        return cls(read_keys(path))


def read_keys(path: Path) -> list[ApiKey]:
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return []
    except tomllib.TOMLDecodeError as err:
        raise HashsvcError(f"{path}: not valid TOML: {err}") from None
    keys: list[ApiKey] = []
    for index, entry in enumerate(document.get("keys", [])):
        where = f"{path}: keys[{index}]"
        name, roles, sha = entry.get("name"), entry.get("roles"), entry.get("sha256")
        if not isinstance(name, str) or not isinstance(sha, str) or len(sha) != 64:
            raise HashsvcError(f"{where}: needs a name and a 64-hex-digit sha256")
        if not isinstance(roles, list) or not roles or not set(roles) <= set(ROLES):
            raise HashsvcError(f"{where} ({name}): roles must be a non-empty subset of {ROLES}")
        keys.append(ApiKey(name, frozenset(roles), sha.lower(), _banks(entry, where, name)))
    return keys


def _banks(entry: dict[str, object], where: str, name: str) -> frozenset[str] | None:
    """A key's bank scope: absent for every bank; else a non-empty list of bank names (an empty
    list would be a key that can see nothing, which is a mistake rather than a scope)."""
    if "banks" not in entry:
        return None
    banks = entry["banks"]
    if not isinstance(banks, list) or not banks or not all(isinstance(b, str) for b in banks):
        raise HashsvcError(f"{where} ({name}): banks must be a non-empty list of bank names "
                           "(leave it out for every bank)")
    try:
        return frozenset(validate_name(bank) for bank in banks)
    except HashsvcError as err:
        raise HashsvcError(f"{where} ({name}): {err.message}") from None


def add_key(path: Path, name: str, roles: list[str], banks: list[str] | None = None) -> str:
    """Make a new key, append its hash to `path`, and return the key (shown once); `banks`
    scopes it to those banks (None: every bank).

    The file is edited as text, never rewritten from what was parsed: comments, order and
    layout written by people stay as they were (tomllib can read TOML but not write it)."""
    validate_name(name, "key name")
    if not roles or not set(roles) <= set(ROLES):
        raise HashsvcError(f"roles must be a non-empty subset of {', '.join(ROLES)}")
    scope = None if banks is None else frozenset(validate_name(bank) for bank in banks)
    existing = read_keys(path)
    if any(key.name == name for key in existing):
        raise AlreadyExistsError(f"a key named {name!r} already exists in {path}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    new = ApiKey(name, frozenset(roles), digest(key), scope)
    try:
        text = path.read_text()
    except FileNotFoundError:
        text = _HEADER
    if text and not text.endswith("\n"):
        text += "\n"
    roles_toml = ", ".join(f'"{role}"' for role in sorted(new.roles))
    banks_toml = ("" if scope is None else
                  "banks = [" + ", ".join(f'"{bank}"' for bank in sorted(scope)) + "]\n")
    text += (f'\n[[keys]]\nname = "{new.name}"\nroles = [{roles_toml}]\n{banks_toml}'
             f'sha256 = "{new.sha256}"\n')
    _replace(path, text, [*existing, new])
    return key


def remove_key(path: Path, name: str) -> None:
    """Remove the key named `name` from `path`: its `[[keys]]` table and the comment lines just
    above it go; every other line of the file stays as it was."""
    existing = read_keys(path)
    if not any(key.name == name for key in existing):
        raise NotFoundError(f"no key named {name!r} in {path}")
    lines = path.read_text().splitlines(keepends=True)
    headers = [i for i, line in enumerate(lines) if line.lstrip().startswith("[")]
    for start, end in zip(headers, [*headers[1:], len(lines)], strict=True):
        header = lines[start].partition("#")[0].strip()
        if header != "[[keys]]" or _table_name(lines[start:end]) != name:
            continue
        while start > 0 and lines[start - 1].lstrip().startswith("#"):
            start -= 1  # its own comment, written just above it
        content = [i for i in range(start, end) if _is_content(lines[i])]
        stop = content[-1] + 1 if content else end
        while stop < end and not lines[stop].strip():
            stop += 1  # the blank lines after it; comments further down belong to what follows
        _replace(path, "".join(lines[:start] + lines[stop:]),
                 [key for key in existing if key.name != name])
        return
    raise HashsvcError(f"{path}: cannot find the [[keys]] table of {name!r} to remove it; "
                       "edit the file by hand")


_HEADER = "# hashsvc API keys: SHA-256 hashes only. Add keys with `hashsvc keys add`.\n"


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _table_name(lines: list[str]) -> object:
    try:
        tables = tomllib.loads("".join(lines)).get("keys", [{}])
    except tomllib.TOMLDecodeError:
        return None
    return tables[0].get("name") if tables else None


def _replace(path: Path, text: str, expected: list[ApiKey]) -> None:
    """Write `text` to `path` atomically (0600), after checking that it parses to exactly the
    `expected` keys: a text edit of an unusually laid-out file fails here, not in the server."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pending = path.with_name(path.name + ".pending")
    fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        edited = read_keys(pending)
    except HashsvcError:
        edited = []
    if edited != expected:
        pending.unlink()
        raise HashsvcError(f"{path}: its layout defeats a safe edit (the result would not hold "
                           "exactly the keys intended); edit the file by hand")
    pending.replace(path)
