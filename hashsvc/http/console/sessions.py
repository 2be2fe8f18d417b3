"""Console sessions: the signed-in key, sealed in a cookie, and the CSRF tokens bound to it.

Why the key travels in the cookie, encrypted, rather than in server memory: every console action
is a gRPC call made *with the analyst's own key* (so roles, limits and the audit log apply as to
any client), and any worker of any admin server must be able to make it. AES-GCM under the
console secret (`load_secret`) keeps the key unreadable and the cookie unforgeable; the store's
session row (hashsvc/store/console_sessions.py) is what makes sign-out final everywhere.

A CSRF token is an HMAC of the session id under the secret: a form's token is good only with
the session it was rendered for, and dies with it. Before sign-in the same holds for a
short-lived pre-session id (the sign-in form is protected too).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hashsvc.errors import HashsvcError

SECRET_BYTES = 32
_NONCE_BYTES = 12
_SESSION_AAD = b"hashsvc console session v1"
_FLASH_AAD = b"hashsvc console flash v1"


def ensure_secret(path: Path) -> None:
    """Create the secret (0600) if it is missing: done once by `hashsvc serve` before any
    worker starts, so workers never race to create different ones."""
    if path.exists():
        load_secret(path)  # a damaged file refuses the start, in one line
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(SECRET_BYTES) + "\n")


def load_secret(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
        secret = bytes.fromhex(text)
    except (OSError, ValueError) as err:
        raise HashsvcError(f"cannot read the console secret {path} (--console-secret-file): "
                           f"{getattr(err, 'strerror', None) or 'not hex'}") from None
    if len(secret) < SECRET_BYTES:
        raise HashsvcError(f"the console secret {path} is too short: {SECRET_BYTES} random "
                           "bytes, hex-encoded, are needed (delete it to have one made)")
    return secret


@dataclass(frozen=True)
class Session:
    """A signed-in analyst: `id` is random and names the session's row; `key` is their API
    key, used for every gRPC call the console makes for them."""

    id: str
    key: str
    expires_at: float

    @property
    def digest(self) -> str:
        """What the store keeps instead of the id."""
        return hashlib.sha256(self.id.encode()).hexdigest()


class Sealer:
    """Seals and opens session cookies, flash messages and CSRF tokens under one secret."""

    def __init__(self, secret: bytes) -> None:
        # Separate keys per use, so a value sealed for one purpose never opens as another.
        self._aead = AESGCM(_derive(secret, b"aead"))
        self._mac_key = _derive(secret, b"csrf")

    def new_session(self, key: str, ttl: float) -> Session:
        return Session(secrets.token_urlsafe(24), key, time.time() + ttl)

    def seal_session(self, session: Session) -> str:
        payload = json.dumps({"id": session.id, "key": session.key,
                              "exp": session.expires_at}).encode()
        return self._seal(payload, _SESSION_AAD)

    def open_session(self, cookie: str | None) -> Session | None:
        """The session in `cookie`, or None if it is absent, forged, damaged or expired."""
        payload = self._open(cookie, _SESSION_AAD)
        if payload is None:
            return None
        try:
            values = json.loads(payload)
            session = Session(str(values["id"]), str(values["key"]), float(values["exp"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires_at > time.time() else None

    def seal_flash(self, message: str, kind: str) -> str:
        return self._seal(json.dumps({"m": message, "k": kind}).encode(), _FLASH_AAD)

    def open_flash(self, cookie: str | None) -> tuple[str, str] | None:
        payload = self._open(cookie, _FLASH_AAD)
        try:
            values = json.loads(payload) if payload is not None else None
            return (str(values["m"]), str(values["k"])) if values else None
        except (ValueError, KeyError, TypeError):
            return None

    def csrf_token(self, session_id: str) -> str:
        return hmac.new(self._mac_key, session_id.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, session_id: str, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf_token(session_id), token)

    def _seal(self, payload: bytes, aad: bytes) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, payload, aad)
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def _open(self, text: str | None, aad: bytes) -> bytes | None:
        if not text or len(text) > 8192:
            return None
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad)
        except (ValueError, InvalidTag):
            return None


def _derive(secret: bytes, label: bytes) -> bytes:
    return hmac.new(secret, b"hashsvc console " + label, hashlib.sha256).digest()
