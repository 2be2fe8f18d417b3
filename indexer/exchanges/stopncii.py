"""The `stopncii` exchange: StopNCII.org's hash API, through python-threatexchange's client
(`StopNCIIAPI`, the field's reference implementation; the optional extra `[exchanges]`).

How it pages: FetchHashes returns the hash records changed since a timestamp, a page at a
time; a page names the next by an opaque `nextPageToken` and gives `nextSetTimestamp`, the
timestamp to resume from. Each record is the whole current state of one hash, so applying one
again is harmless. The checkpoint is {start, next token, resume timestamp}: a sync stopped
mid-listing carries on with the token; a token StopNCII no longer takes (the client warns they
do not last) is dropped for the resume timestamp, which is how python-threatexchange resumes
every fetch; a listing read whole makes the next sync start at its `nextSetTimestamp`.

A record is one hash, so its upstream id is the hash itself (what feedback names). Only image
PDQ hashes are kept (video MD5/TMK, text and URLs are not images). A record whose aggregate
status is Withdrawn or Deleted deletes ours. Its status and the platforms' feedback
(`Blocked:Platform`, `NotBlocked:Platform`) and their tags are its upstream tags.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from hashsvc.errors import HashsvcError
from hashsvc.hashing.algorithms import get_algorithm
from hashsvc.store.exchange_model import Credentials, ExchangePage, UpstreamEntry
from indexer.exchanges.web_api import (
    cap_retry_after,
    check_config,
    checked_base_url,
    fetch_failed,
    first_line,
    upstream_tags,
)

if TYPE_CHECKING:
    from threatexchange.exchanges.clients.stopncii import api as stopncii_api

# StopNCII's signal type -> our algorithm (images only)
SIGNAL_TYPES = {"ImagePDQ": "pdq"}
GONE = ("Withdrawn", "Deleted")  # aggregate statuses the client says to delete
VERDICTS = {"confirmed": "Blocked", "false_positive": "NotBlocked"}
# what an expired page token is answered with; anything else fails the sync as it is
TOKEN_REFUSED = (400, 404, 410)
_PDQ_HEX = re.compile(r"[0-9a-f]{64}")
_CREDENTIALS_FORMAT = "FETCH_FUNCTION_KEY,SUBSCRIPTION_KEY[,SUBMIT_FEEDBACK_FUNCTION_KEY]"


class StopNCIIExchange:
    def __init__(self, config: dict[str, Any], credentials: Credentials | None) -> None:
        try:
            from threatexchange.exchanges.clients.stopncii import api
        except ImportError:
            raise HashsvcError("the stopncii exchange needs python-threatexchange: "
                               "pip install 'hashsvc[exchanges]'") from None
        check_config("stopncii", config, ("base_url",))
        self._base_url = checked_base_url("stopncii", config.get("base_url"))
        if credentials is None:
            raise HashsvcError(f"the stopncii exchange needs credentials ({_CREDENTIALS_FORMAT}"
                               " in --credentials-env or --credentials-file)")
        self._api_module = api
        self._credentials = credentials
        self._client: Any = None
        self._feedback_key = False  # known once the credentials are read

    def _api(self) -> Any:
        """The client, made at the first call: only then are the credentials read."""
        if self._client is None:
            from indexer.exchanges import read_secret

            keys = [part.strip() for part in read_secret(self._credentials).split(",")]
            where = f"{self._credentials.source} {self._credentials.name}"
            if len(keys) not in (2, 3) or not all(keys):
                raise HashsvcError(f"stopncii credentials ({where}) must be "
                                   f"{_CREDENTIALS_FORMAT}")
            if len(keys) == 3 and "://" in keys[2]:
                raise HashsvcError(f"stopncii credentials ({where}): the third part is the "
                                   "SubmitFeedback function key; a base URL goes in --base-url")
            api = self._api_module
            self._feedback_key = len(keys) == 3
            others = {api.StopNCIIEndpoint.SubmitFeedback: keys[2]} if len(keys) == 3 else {}
            self._client = _page_keeping_client(api)(
                subscription_key=keys[1], fetch_function_key=keys[0],
                additional_function_keys=others, base_url_override=self._base_url or None)
        return self._client

    def fetch(self, checkpoint: str | None) -> ExchangePage:
        state: dict[str, Any] = (json.loads(checkpoint) if checkpoint else
                                 {"start": self._api_module.StopNCIIAPI.DEFAULT_START_TIME,
                                  "next": ""})
        try:
            client = self._api()
            try:
                response = client.fetch_hashes(start_timestamp=state["start"],
                                               next_page=state["next"])
            except Exception as err:
                status = getattr(getattr(err, "response", None), "status_code", None)
                if not (state["next"] and status in TOKEN_REFUSED):
                    raise
                state = {"start": state["resume"], "next": ""}
                response = client.fetch_hashes(start_timestamp=state["start"])
        except HashsvcError:
            raise
        except Exception as err:  # requests' errors, JSON that does not parse, dacite's
            raise fetch_failed("stopncii", err) from None
        _check_every_record_parsed(client.last_page, response.hashRecords)
        # upstream id -> the entry, or None if deleted; a record is the hash's whole state,
        # so of two records of one hash the later wins
        changes: dict[str, UpstreamEntry | None] = {}
        for number, record in enumerate(response.hashRecords, 1):
            algorithm = SIGNAL_TYPES.get(record.signalType.value)
            if algorithm is None:
                continue
            upstream_id = record.hashValue.lower()
            if record.hashStatus.value in GONE:
                changes[upstream_id] = None
                continue
            try:
                digest = get_algorithm(algorithm).parse(record.hashValue)
            except HashsvcError as err:
                raise HashsvcError(f"stopncii exchange: record {number} of the page: "
                                   f"{err.message}; page refused, nothing applied") from None
            changes[upstream_id] = UpstreamEntry(upstream_id, algorithm, digest,
                                                 tags=_tags(record))
        following = _next_state(state, response)
        return ExchangePage([e for e in changes.values() if e is not None],
                            json.dumps(following, sort_keys=True),
                            more=response.hasMoreRecords,
                            deletions=[i for i, e in changes.items() if e is None])

    def send_feedback(self, upstream_id: str, verdict: str, reason: str) -> None:
        """An analyst's verdict on a match as StopNCII feedback (Blocked / NotBlocked) on the
        hash. The reason stays here: it is the analyst's note, not the exchange's."""
        api = self._api_module
        if verdict not in VERDICTS:
            raise HashsvcError(f"stopncii feedback: verdict {verdict!r} is not one of "
                               f"{', '.join(VERDICTS)}")
        if not _PDQ_HEX.fullmatch(upstream_id):
            raise HashsvcError(f"stopncii feedback: {upstream_id[:80]!r} is not the upstream "
                               "id of a StopNCII entry (a PDQ hash in hex)")
        client = self._api()
        if not self._feedback_key:
            raise HashsvcError(f"stopncii feedback on {upstream_id}: the credentials hold no "
                               f"SubmitFeedback function key ({_CREDENTIALS_FORMAT})")
        try:
            client.submit_feedback(api.StopNCIISignalType.ImagePDQ, upstream_id,
                                   api.StopNCIICSPFeedbackValue(VERDICTS[verdict]))
        except json.JSONDecodeError:
            pass  # accepted (2xx) with a body that is not JSON: sent, not to be sent again
        except Exception as err:
            raise HashsvcError(f"stopncii feedback on {upstream_id}: not sent "
                               f"({first_line(err)})") from None


def _page_keeping_client(api: Any) -> Any:
    """StopNCIIAPI keeping each FetchHashes page as served. Why: the client skips a record it
    cannot parse (logging it), which would apply the rest of the page; we refuse it whole.
    Its sessions wait out at most MAX_RETRY_AFTER_S of a Retry-After (web_api)."""

    class PageKeepingAPI(api.StopNCIIAPI):  # type: ignore[misc]
        last_page: Any = None

        def _get(self, endpoint: Any, **params: Any) -> Any:
            self.last_page = super()._get(endpoint, **params)
            return self.last_page

        def _get_session(self, endpoint: Any) -> Any:
            return cap_retry_after(super()._get_session(endpoint))

    return PageKeepingAPI


def _check_every_record_parsed(page: Any, parsed: list[stopncii_api.StopNCIIHashRecord]) -> None:
    served = page.get("hashRecords") or []
    if len(served) == len(parsed):
        return
    known = {record.hashValue for record in parsed}
    number, bad = next(((n, r) for n, r in enumerate(served, 1)
                        if not isinstance(r, dict) or r.get("hashValue") not in known),
                       (0, None))
    shown = json.dumps(bad)[:200]
    raise HashsvcError(f"stopncii exchange: record {number} of the page is not a StopNCII hash "
                       f"record ({shown}); page refused, nothing applied, the next sync "
                       "resumes")


def _tags(record: stopncii_api.StopNCIIHashRecord) -> tuple[str, ...]:
    opinions = sorted(f"{f.feedbackValue.value}:{f.source}" if f.source else
                      f.feedbackValue.value for f in record.CSPFeedbacks)
    labels = sorted({tag for f in record.CSPFeedbacks for tag in f.tags})
    return upstream_tags([f"status:{record.hashStatus.value}", *opinions, *labels])


def _next_state(state: dict[str, Any], response: stopncii_api.FetchHashesResponse
                ) -> dict[str, Any]:
    if response.hasMoreRecords and response.nextPageToken:
        return {"start": state["start"], "next": response.nextPageToken,
                "resume": response.nextSetTimestamp}
    if response.hasMoreRecords and response.nextSetTimestamp <= state["start"]:
        raise HashsvcError("stopncii exchange: the page says more records follow but gives "
                           "neither a page token nor a later timestamp; nothing applied")
    return {"start": response.nextSetTimestamp, "next": ""}
