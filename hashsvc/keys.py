"""API keys with roles, stored as SHA-256 hashes only.

A key is 32 random bytes (256 bits), so a plain SHA-256 is a safe verifier: there is nothing to
brute-force, and lookups stay O(1) per call. The key itself is shown once, when it is made, and
never written to a log or a file by the server.

Roles: `scan` may call ScanService; `admin` may call AdminService and ScanService.

    [[keys]]
    name = "platform-a"
    roles = ["scan"]
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

from hashsvc.errors import AlreadyExistsError, HashsvcError
from hashsvc.store import validate_name

ROLES = ("scan", "admin")
KEY_PREFIX = "hsk_"


@dataclass(frozen=True)
class ApiKey:
    name: str
    roles: frozenset[str]
    sha256: str

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
        keys.append(ApiKey(name, frozenset(roles), sha.lower()))
    return keys


def add_key(path: Path, name: str, roles: list[str]) -> str:
    """Make a new key, append its hash to `path`, and return the key (shown once)."""
    validate_name(name, "key name")
    if not roles or not set(roles) <= set(ROLES):
        raise HashsvcError(f"roles must be a non-empty subset of {', '.join(ROLES)}")
    existing = read_keys(path)
    if any(key.name == name for key in existing):
        raise AlreadyExistsError(f"a key named {name!r} already exists in {path}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    existing.append(ApiKey(name, frozenset(roles), digest(key)))
    _write_keys(path, existing)
    return key


def _write_keys(path: Path, keys: list[ApiKey]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# hashsvc API keys: SHA-256 hashes only. Add keys with `hashsvc keys add`.\n"]
    for key in keys:
        roles = ", ".join(f'"{role}"' for role in sorted(key.roles))
        lines.append(f'\n[[keys]]\nname = "{key.name}"\nroles = [{roles}]\n'
                     f'sha256 = "{key.sha256}"\n')
    pending = path.with_name(path.name + ".pending")
    fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("".join(lines))
        handle.flush()
        os.fsync(handle.fileno())
    pending.replace(path)
