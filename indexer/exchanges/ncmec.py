"""The `ncmec` exchange: NCMEC's hash-sharing API, through python-threatexchange's client
(`NCMECHashAPI`, the field's reference implementation; the optional extra `[exchanges]`).

How it pages: NCMEC returns the entries updated in a time window [from, to], a page at a
time, each page naming the next (`<paging><next>`); entries are not in time order, so a window
only counts as read once its last page is. The checkpoint is (from, to, next page): a sync
killed mid-window resumes at the next page of the same window (as the client's own
`resume_paging_url` requires: the same from and to); a finished window makes the next sync
read [to, now]. Upserts are idempotent, so the windows' shared second costs nothing.

An NCMEC entry carries several fingerprints; each one we match on (image MD5 and PDQ) is an
entry of ours with upstream id `MEMBER-ENTRY_ID:TYPE` (NCMEC's entry ids are per member, the
ESP that listed it, and its feedback API addresses an entry by both), external id the NCMEC
entry id, and the entry's classification as its tag. A deleted entry (`<deletedImage>`), or a
fingerprint an update no longer has, deletes ours.

Feedback (`send_feedback`): a confirmed match is an upvote, a false positive a downvote. NCMEC
takes a downvote only with one of its own reasons (by GUID, listed per fingerprint type), not
free text: the analyst's reason is used if it names one of them (or is its GUID), else NCMEC's
only reason if it has just one; otherwise the send fails naming the reasons, and stays queued.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from hashsvc.errors import HashsvcError
from hashsvc.store.exchange_model import Credentials, ExchangePage, UpstreamEntry
from indexer.exchanges.web_api import cap_retry_after, checked_base_url, first_line

# NCMEC's fingerprint element -> our algorithm (images only: video MD5s hash whole videos)
FINGERPRINTS = {"md5": "md5", "pdq": "pdq"}
_TAG_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")


class NCMECExchange:
    def __init__(self, config: dict[str, Any], credentials: Credentials | None) -> None:
        try:
            from threatexchange.exchanges.clients.ncmec import hash_api
        except ImportError:
            raise HashsvcError("the ncmec exchange needs python-threatexchange: "
                               "pip install 'hashsvc[exchanges]'") from None
        if credentials is None:
            raise HashsvcError("the ncmec exchange needs credentials (USER:PASSWORD in "
                               "--credentials-env or --credentials-file)")
        environment = str(config.get("environment", "Industry"))
        try:
            env = hash_api.NCMECEnvironment[environment]
        except KeyError:
            known = ", ".join(e.name for e in hash_api.NCMECEnvironment)
            raise HashsvcError(f"unknown NCMEC environment {environment!r} (known: {known})"
                               ) from None
        self._hash_api = hash_api
        self._environment = env
        self._credentials = credentials
        self._base_url = checked_base_url("ncmec", config.get("base_url"))
        self._client: Any = None

    def _api(self) -> Any:
        """The client, made at the first fetch: only then are the credentials read."""
        if self._client is None:
            from indexer.exchanges import read_secret

            user, sep, password = read_secret(self._credentials).partition(":")
            if not sep or not user or not password:
                raise HashsvcError(f"ncmec credentials ({self._credentials.source} "
                                   f"{self._credentials.name}) must be USER:PASSWORD")
            self._client = capped_client(self._hash_api)(user, password, self._environment)
            if self._base_url:  # a stand-in: the client has no parameter for it
                self._client._base_url = self._base_url
        return self._client

    def fetch(self, checkpoint: str | None) -> ExchangePage:
        state: dict[str, Any] = (json.loads(checkpoint) if checkpoint
                                 else {"to": 0, "next": ""})
        if state["next"]:
            start, end = int(state["from"]), int(state["to"])
        else:  # the last window was read whole: the next one runs from its end to now
            start, end = int(state["to"]), int(time.time())
        try:
            response = self._api().get_entries(start_timestamp=start, end_timestamp=end,
                                               next_=state["next"])
        except HashsvcError:
            raise
        except Exception as err:  # requests' errors, and the bare Exception of a bad page
            raise HashsvcError(f"ncmec exchange: fetch failed ({first_line(err)}); "
                               "nothing applied, the next sync resumes") from None
        upserts: list[UpstreamEntry] = []
        deletions: list[str] = []
        for update in response.updates:
            if update.entry_type.value != "image":
                continue
            tags = (_TAG_CHARS.sub("-", update.classification),) if update.classification else ()
            for kind, algorithm in FINGERPRINTS.items():
                upstream_id = f"{update.member_id}-{update.id}:{kind.upper()}"
                value = None if update.deleted else update.fingerprints.get(kind)
                if value is None:
                    deletions.append(upstream_id)
                    continue
                try:
                    digest = bytes.fromhex(value)
                except ValueError:
                    raise HashsvcError(f"ncmec exchange: entry {update.id}: {kind} "
                                       f"{value[:80]!r} is not hexadecimal") from None
                upserts.append(UpstreamEntry(upstream_id, algorithm, digest, tags=tags,
                                             external_id=update.id))
        following = response.next or ""
        return ExchangePage(upserts, json.dumps({"from": start, "to": end, "next": following}),
                            more=bool(following), deletions=deletions)


    def send_feedback(self, upstream_id: str, verdict: str, reason: str) -> None:
        member, _, rest = upstream_id.partition("-")
        entry_id, _, kind = rest.rpartition(":")
        if not (member.isdigit() and entry_id and kind.lower() in FINGERPRINTS):
            raise HashsvcError(f"ncmec exchange: upstream id {upstream_id[:80]!r} is not "
                               "MEMBER-ENTRY:TYPE; sync the bank again to renew it")
        fingerprint = self._hash_api.FingerprintType(kind.upper())
        feedback = self._hash_api.FeedbackType
        try:
            api = self._api()
            if verdict == "confirmed":
                api.submit_feedback(int(member), entry_id, fingerprint, feedback.upvote)
                return
            api.submit_feedback(int(member), entry_id, fingerprint, feedback.downvote,
                                self._reason_guid(api, fingerprint, reason))
        except HashsvcError:
            raise
        except Exception as err:  # requests' errors, and the client's bare Exception
            raise HashsvcError(f"ncmec exchange: feedback on {upstream_id} not sent "
                               f"({first_line(err)}); kept for the next sync") from None

    @staticmethod
    def _reason_guid(api: Any, fingerprint: Any, reason: str) -> str | None:
        """NCMEC's reason GUID the analyst's reason names; None lets the client take the
        only one there is (it fails, naming them, if there are several)."""
        reasons: dict[str, str] = api.feedback_reasons(fingerprint)  # GUID -> name
        wanted = reason.strip().casefold()
        for guid, name in reasons.items():
            if wanted in (guid.casefold(), name.strip().casefold()):
                return guid
        if len(reasons) == 1:
            return None
        raise HashsvcError(f"ncmec exchange: a downvote needs one of NCMEC's reasons for "
                           f"{fingerprint.value}, and {reason[:80]!r} names none: "
                           f"{', '.join(sorted(reasons.values()))}")


def capped_client(hash_api: Any) -> Any:
    """NCMECHashAPI whose sessions wait out at most MAX_RETRY_AFTER_S of a Retry-After
    (web_api: a sync holds the writer lock all the while)."""

    class CappedAPI(hash_api.NCMECHashAPI):  # type: ignore[misc]
        def _get_session(self) -> Any:
            return cap_retry_after(super()._get_session())

    return CappedAPI
