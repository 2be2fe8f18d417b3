"""The `tat` exchange: Tech Against Terrorism's hash list API (the Terrorist Content Analytics
Platform), through python-threatexchange's client (`TATHashListAPI`; the extra `[exchanges]`).

How it pages: the v2 list returns entries in ascending order of update after a cursor,
`after` = "TIMESTAMP,ID" of the last entry read, and each page gives the cursor of its own
last entry (`checkpoint`) and a `next` link while more follow. The checkpoint is that cursor:
every fetch asks for what follows it, so a sync stopped anywhere resumes after the last page
it applied (python-threatexchange resumes a fetch the same way); `next` only says whether
more follow. The client signs in (username and password for a token) before every page.

Each TAT entry is one hash with its own id (the upstream id). PDQ hashes and the MD5s of
images are kept (an MD5 of a video never matches an image); the entry's ideology is its
upstream tag. TAT reports deletions as entries with `deleted: true`, which delete ours. TAT
has no feedback API: this exchange takes no opinions back.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hashsvc.errors import HashsvcError
from hashsvc.hashing.algorithms import get_algorithm
from hashsvc.store.exchange_model import Credentials, ExchangePage, UpstreamEntry
from indexer.exchanges.web_api import (
    cap_retry_after,
    check_config,
    checked_base_url,
    fetch_failed,
    upstream_tags,
)

if TYPE_CHECKING:
    from threatexchange.exchanges.clients.techagainstterrorism import api as tat_api

ALGORITHMS = {"PDQ": "pdq", "MD5": "md5"}  # TAT's algorithm -> ours
VIDEO_TYPES = frozenset({"mov", "m4v", "mp4", "webm", "avi", "mkv", "flv", "wmv", "mpg",
                         "mpeg", "3gp"})


class TATExchange:
    def __init__(self, config: dict[str, Any], credentials: Credentials | None) -> None:
        try:
            from threatexchange.exchanges.clients.techagainstterrorism import api
        except ImportError:
            raise HashsvcError("the tat exchange needs python-threatexchange: "
                               "pip install 'hashsvc[exchanges]'") from None
        check_config("tat", config, ("base_url",))
        self._base_url = checked_base_url("tat", config.get("base_url"))
        if credentials is None:
            raise HashsvcError("the tat exchange needs credentials (USERNAME:PASSWORD in "
                               "--credentials-env or --credentials-file)")
        self._api_module = api
        self._credentials = credentials
        self._client: Any = None

    def _api(self) -> Any:
        """The client, made at the first fetch: only then are the credentials read."""
        if self._client is None:
            from indexer.exchanges import read_secret

            user, sep, password = read_secret(self._credentials).partition(":")
            if not sep or not user or not password:
                raise HashsvcError(f"tat credentials ({self._credentials.source} "
                                   f"{self._credentials.name}) must be USERNAME:PASSWORD")
            self._client = _quiet_client(self._api_module)(user, password)
            if self._base_url:  # a stand-in: the client has no parameter for it
                self._client.BASE_URL = self._base_url + "/"
        return self._client

    def fetch(self, checkpoint: str | None) -> ExchangePage:
        after = str(json.loads(checkpoint)["after"]) if checkpoint else ""
        try:
            response = self._api().fetch_hashes(after=after)
        except HashsvcError:
            raise
        except Exception as err:  # requests' errors, JSON that does not parse, a missing field
            raise fetch_failed("tat", err) from None
        # upstream id -> the entry, or None if deleted (or no longer one we keep); of two
        # versions of an entry in one page the later wins
        changes: dict[str, UpstreamEntry | None] = {}
        for number, entry in enumerate(response.results, 1):
            try:
                _check_fields(entry)
                changes[str(entry.id)] = None
                if not entry.deleted and (algorithm := _algorithm(entry)) is not None:
                    digest = get_algorithm(algorithm).parse(entry.hash_digest)
                    ideology = [entry.ideology] if isinstance(entry.ideology, str) else []
                    changes[str(entry.id)] = UpstreamEntry(str(entry.id), algorithm, digest,
                                                           tags=upstream_tags(ideology))
            except HashsvcError as err:
                raise HashsvcError(f"tat exchange: entry {number} of the page (id "
                                   f"{str(entry.id)[:40]!r}): {err.message}; page refused, "
                                   "nothing applied, the next sync resumes") from None
        following = response.checkpoint or after  # an empty page has no last entry
        return ExchangePage([e for e in changes.values() if e is not None],
                            json.dumps({"after": following}), more=bool(response.next),
                            deletions=[i for i, e in changes.items() if e is None])


def _quiet_client(api: Any) -> Any:
    """TATHashListAPI signing in without its log line. Why: the client logs the username at
    INFO on the root logger before every page, and a server's logs must hold no credential.
    Its sessions wait out at most MAX_RETRY_AFTER_S of a Retry-After (web_api)."""

    class QuietAPI(api.TATHashListAPI):  # type: ignore[misc]
        @contextlib.contextmanager
        def _get_session(self, auth_token: str | None = None) -> Iterator[Any]:
            with super()._get_session(auth_token) as session:
                yield cap_retry_after(session)

        def get_auth_token(self, username: str, password: str) -> str | None:
            answer = self._post(api.TATEndpoint.authenticate, data={
                "username": username, "password": password, "resend": False})
            token = answer.get("token")
            return str(token) if token else None

    return QuietAPI


def _check_fields(entry: tat_api.TATHashListEntry) -> None:
    """The client builds entries without checking a field's type; a page with one bad entry
    is refused whole rather than applied in part."""
    if not isinstance(entry.id, int) or isinstance(entry.id, bool):
        raise HashsvcError("its id is not an integer")
    if not isinstance(entry.deleted, bool):
        raise HashsvcError("`deleted` is not true or false")
    for name in ("hash_digest", "algorithm", "file_type"):
        if not isinstance(getattr(entry, name), str):
            raise HashsvcError(f"its {name} is not a string")


def _algorithm(entry: tat_api.TATHashListEntry) -> str | None:
    """Ours for the entry's hash, or None where it cannot match an image."""
    if entry.algorithm.upper() == "MD5" and entry.file_type.lower() in VIDEO_TYPES:
        return None
    return ALGORITHMS.get(entry.algorithm.upper())
