"""The `fb_threatexchange` exchange: a ThreatExchange privacy group (GIFCT's hash-sharing
database and the other collaborations on Meta's ThreatExchange), through python-threatexchange's
client (`ThreatExchangeAPI`; the optional extra `[exchanges]`).

How it pages: the Graph API's `/{privacy_group}/threat_updates` lists the indicators changed in
a time window [start_time, stop_time], a page at a time, each page naming the next by a URL
(`paging.next`, a cursor). The checkpoint is (start, stop, next page): a sync killed mid-window
resumes at the next page of the same window; a finished window makes the next sync read
[stop, now]. Upserts are idempotent, so the windows' shared second costs nothing. The next URL
is stored without its `access_token` (the Graph API puts the token in it) and the token is
added again when it is fetched; a next URL on another host than the base URL is refused, so the
token only ever goes where the binding says.

An indicator of a type we match (photo PDQ, MD5 and SHA-256) is an entry of ours with upstream
and external id the indicator id; its descriptors' tags, and the opinions python-threatexchange
reads from their status and reactions, are its tags. A tombstone (`should_delete`, or no
descriptor left that we may see) deletes ours, and so does a hash re-tagged as a video's.

Feedback is a reaction on each of the indicator's descriptors: `confirmed` is SAW_THIS_TOO
(what the client's `react_matched_threat_descriptor` sends), `false_positive` is
DISAGREE_WITH_TAGS (the reaction python-threatexchange itself reads as a negative opinion). The
reactions API takes no text, so the reason stays with us.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

from hashsvc.errors import HashsvcError
from hashsvc.store.exchange_model import Credentials, ExchangePage, UpstreamEntry
from indexer.exchanges.file_list import FETCH_ATTEMPTS, _retry_after
from indexer.exchanges.web_api import checked_base_url

# ThreatExchange indicator type -> our algorithm (photo hashes only; a video's MD5 or SHA-256
# is the same indicator type tagged media_type_video, as python-threatexchange reads it)
INDICATOR_TYPES = {"HASH_PDQ": "pdq", "HASH_MD5": "md5", "HASH_SHA256": "sha256"}
VIDEO_TAG = "media_type_video"
REACTIONS = {"confirmed": "SAW_THIS_TOO", "false_positive": "DISAGREE_WITH_TAGS"}
# what each update carries: the indicator, and per descriptor what its opinion is made of
FIELDS = ("id", "indicator", "type", "last_updated", "should_delete",
          "descriptors{id,reactions,my_reactions,owner{id},tags,status}")
# Graph API error codes that mean "over a rate limit" (it sends them with 400/403, not 429)
RATE_LIMITED = frozenset({4, 17, 32, 613})
DEFAULT_PAGE_SIZE = 500
MAX_TAGS = 32  # LIMITS.tags: past it, descriptor tags give way to the opinions
_TAG_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")
_TOKEN_PARAM = re.compile(r"(access_token=)[^&\s'\"]+")
T = TypeVar("T")


class ThreatExchangeExchange:
    def __init__(self, config: dict[str, Any], credentials: Credentials | None) -> None:
        try:
            from threatexchange.exchanges.clients.fb_threatexchange import api
            from threatexchange.exchanges.impl import fb_threatexchange_api
        except ImportError:
            raise HashsvcError("the fb_threatexchange exchange needs python-threatexchange: "
                               "pip install 'hashsvc[exchanges]'") from None
        if credentials is None:
            raise HashsvcError("the fb_threatexchange exchange needs credentials (an app "
                               "token APP_ID|SECRET in --credentials-env or --credentials-file)")
        try:
            self.privacy_group = int(config.get("privacy_group", 0))
        except (TypeError, ValueError):
            self.privacy_group = 0
        if self.privacy_group <= 0:
            raise HashsvcError("the fb_threatexchange exchange needs a privacy group: its "
                               f"numeric id, got {str(config.get('privacy_group'))[:40]!r}")
        self.page_size = int(config.get("page_size", DEFAULT_PAGE_SIZE))
        if self.page_size < 1:
            raise HashsvcError(f"page_size must be at least 1, got {self.page_size}")
        self._api_module = api
        self._records = fb_threatexchange_api.FBThreatExchangeIndicatorRecord
        self._credentials = credentials
        self._base_url = (_checked_base_url(config.get("base_url"))
                          or str(api.ThreatExchangeAPI._TE_BASE_URL))
        self._token = ""
        self._client: Any = None

    def _api(self) -> Any:
        """The client, made at the first call: only then is the token read."""
        if self._client is None:
            from indexer.exchanges import read_secret

            token = read_secret(self._credentials)
            if not self._api_module.is_valid_app_token(token):
                raise HashsvcError(f"fb_threatexchange credentials ({self._credentials.source} "
                                   f"{self._credentials.name}) must be an app token, "
                                   "APP_ID|SECRET")
            self._token = token
            self._client = self._api_module.ThreatExchangeAPI(
                token, endpoint_override=self._base_url)
        return self._client

    def fetch(self, checkpoint: str | None) -> ExchangePage:
        state: dict[str, Any] = (json.loads(checkpoint) if checkpoint
                                 else {"stop": 0, "next": ""})
        api = self._api()
        if state["next"]:
            start, stop = int(state["start"]), int(state["stop"])
            cursor = api.get_threat_updates(self.privacy_group, fields=FIELDS)
            cursor.next_url = self._own_url(state["next"])  # the page the checkpoint names
            cursor.params = {"access_token": self._token}
        else:  # the last window was read whole: the next one runs from its end to now
            start, stop = int(state["stop"]), int(time.time())
            cursor = api.get_threat_updates(self.privacy_group, start_time=start or None,
                                            stop_time=stop, page_size=self.page_size,
                                            fields=FIELDS)
        updates = self._call("fetch threat_updates", cursor.next,
                             outcome="nothing applied, the next sync resumes")
        following = self._stripped(self._own_url(cursor.next_url)) if cursor.next_url else ""
        if not isinstance(updates, list):
            raise HashsvcError(f"fb_threatexchange: privacy group {self.privacy_group}: the "
                               "page's data is not a list; nothing applied, the next sync "
                               "resumes")
        latest: dict[str, UpstreamEntry | None] = {}  # by indicator id, the page's last word
        for raw in updates:
            upstream_id, entry = self._entry(raw)
            if upstream_id:
                latest.pop(upstream_id, None)
                latest[upstream_id] = entry
        return ExchangePage([e for e in latest.values() if e is not None],
                            json.dumps({"start": start, "stop": stop, "next": following}),
                            more=bool(following),
                            deletions=[i for i, e in latest.items() if e is None])

    def _entry(self, raw: Any) -> tuple[str, UpstreamEntry | None]:
        """(indicator id, our entry or None for a deletion); ("", None) for a type we do not
        match. A malformed update refuses the page it is on."""
        from threatexchange.exchanges.clients.fb_threatexchange.threat_updates import (
            ThreatUpdateJSON,
        )

        try:
            update = ThreatUpdateJSON(raw)
            upstream_id = str(update.id)
            algorithm = INDICATOR_TYPES.get(update.threat_type)
            if algorithm is None:
                return "", None
            if update.should_delete:
                return upstream_id, None
            record = self._records.from_threatexchange_json(self._api().app_id, update)
            indicator = str(update.indicator)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            shown = str(raw.get("id", "?") if isinstance(raw, dict) else "?")[:40]
            raise HashsvcError(f"fb_threatexchange: privacy group {self.privacy_group}: "
                               f"update {shown!r} is malformed ({type(err).__name__}: "
                               f"{str(err)[:80]}); nothing applied, the next sync resumes"
                               ) from None
        if record is None:  # no descriptor we may see: as good as deleted
            return upstream_id, None
        labels = {_tag(t) for opinion in record.opinions for t in opinion.tags} - {""}
        if VIDEO_TAG in labels:
            return upstream_id, None
        opinions = {f"opinion:{o.category.name.lower()}" for o in record.opinions}
        opinions |= {f"my_opinion:{o.category.name.lower()}" for o in record.opinions
                     if o.is_mine}
        tags = sorted(opinions) + sorted(labels)[:max(0, MAX_TAGS - len(opinions))]
        try:
            digest = bytes.fromhex(indicator)
        except ValueError:
            raise HashsvcError(f"fb_threatexchange: indicator {upstream_id}: {update.threat_type}"
                               f" {indicator[:80]!r} is not hexadecimal; nothing applied"
                               ) from None
        return upstream_id, UpstreamEntry(upstream_id, algorithm, digest, tags=tuple(tags),
                                          external_id=upstream_id)

    def send_feedback(self, upstream_id: str, verdict: str, reason: str) -> None:
        """React to every descriptor of the indicator (SAW_THIS_TOO or DISAGREE_WITH_TAGS).
        Reacting again is harmless, so a retry after a partial failure just does it all
        again. `reason` is not sent: the reactions API has no place for text."""
        reaction = REACTIONS.get(verdict)
        if reaction is None:
            raise HashsvcError(f"fb_threatexchange: unknown verdict {verdict[:40]!r} "
                               f"(known: {', '.join(REACTIONS)})")
        if not upstream_id.isdigit():
            raise HashsvcError(f"fb_threatexchange: {upstream_id[:40]!r} is not an indicator id")
        api = self._api()
        descriptors = self._call(f"read indicator {upstream_id}'s descriptors",
                                 api.get_threat_descriptors_from_indicator, int(upstream_id))
        if not descriptors:
            raise HashsvcError(f"fb_threatexchange: indicator {upstream_id} has no descriptor "
                               "we may see, so there is nothing to react to")
        for descriptor in descriptors:
            descriptor_id = str(descriptor.get("id", ""))
            if not descriptor_id.isdigit():
                raise HashsvcError(f"fb_threatexchange: indicator {upstream_id} lists a "
                                   f"descriptor without an id: {str(descriptor)[:80]}")
            _, _, answer = self._call(f"react {reaction} to descriptor {descriptor_id}",
                                      api.react_to_threat_descriptor, descriptor_id, reaction)
            if not (isinstance(answer, dict) and answer.get("success") is True):
                raise HashsvcError(f"fb_threatexchange: react {reaction} to descriptor "
                                   f"{descriptor_id}: refused ({self._graph_error(answer)})")

    def _call(self, what: str, function: Callable[..., T], *args: Any,
              outcome: str = "feedback not sent") -> T:
        """`function`, tried again on 429, 5xx, the Graph API's rate-limit errors and dropped
        connections (at most `FETCH_ATTEMPTS` times, waiting as Retry-After says); any other
        failure at once. The errors name what failed, never the token (requests' messages
        hold URLs that do)."""
        import requests

        problem = ""
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            try:
                return function(*args)
            except requests.HTTPError as err:
                status = err.response.status_code if err.response is not None else 0
                body = _json_or_none(err.response)
                problem = f"HTTP {status} ({self._graph_error(body)})"
                if status != 429 and status < 500 and _graph_code(body) not in RATE_LIMITED:
                    break
                wait = _retry_after(err.response.headers.get("Retry-After")
                                    if err.response is not None else None, attempt)
            except requests.exceptions.JSONDecodeError:
                problem = "the answer is not valid JSON (cut off?)"
                break
            except (requests.ConnectionError, requests.Timeout,
                    requests.exceptions.ChunkedEncodingError) as err:
                problem = f"{type(err).__name__}: {self._scrub(str(err))[:200]}"
                wait = _retry_after(None, attempt)
            except (KeyError, TypeError, AttributeError, ValueError) as err:
                problem = f"unexpected answer ({type(err).__name__}: {self._scrub(str(err))[:80]})"
                break
            if attempt < FETCH_ATTEMPTS:
                time.sleep(wait)
        else:
            problem += f", {FETCH_ATTEMPTS} attempts"
        raise HashsvcError(f"fb_threatexchange: privacy group {self.privacy_group}: cannot "
                           f"{what}: {problem}; {outcome}")

    def _graph_error(self, body: Any) -> str:
        """The Graph API's own account of an error (`{"error": {"code", "message"}}`)."""
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return "no error detail"
        return self._scrub(f"{error.get('type', 'error')} {error.get('code', '?')}: "
                           f"{error.get('message', '')}")[:200]

    def _scrub(self, text: str) -> str:
        text = _TOKEN_PARAM.sub(r"\1***", text)
        return text.replace(self._token, "***") if self._token else text

    def _own_url(self, url: str) -> str:
        """`url` if it is on the base URL's host: the token is only ever sent there."""
        here, there = urllib.parse.urlsplit(self._base_url), urllib.parse.urlsplit(url)
        if (there.scheme, there.netloc) != (here.scheme, here.netloc):
            raise HashsvcError(f"fb_threatexchange: the next page is at {there.scheme}://"
                               f"{there.netloc[:80]}, not at {here.scheme}://{here.netloc}: "
                               "refusing to send the token there; nothing applied")
        return url

    @staticmethod
    def _stripped(url: str) -> str:
        """`url` without its access_token: what the checkpoint may hold."""
        parts = urllib.parse.urlsplit(url)
        query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
                 if k != "access_token"]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _json_or_none(response: Any) -> Any:
    try:
        return response.json() if response is not None else None
    except ValueError:
        return None


def _graph_code(body: Any) -> int | None:
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) else None


def _tag(text: object) -> str:
    """An upstream tag as one of ours (letters, digits, `_.:-`, at most 64 characters)."""
    return _TAG_CHARS.sub("-", str(text)).lstrip("_.:-")[:64]


def _checked_base_url(value: object) -> str:
    """`web_api.checked_base_url`, and no access token in the query: the Graph API takes the
    token there, so a base URL carrying one would put the secret in the binding."""
    if value is not None and "access_token" in urllib.parse.urlsplit(str(value)).query:
        raise HashsvcError("fb_threatexchange base_url must not hold a secret: use the "
                           "credentials")
    return checked_base_url("fb_threatexchange", value)
