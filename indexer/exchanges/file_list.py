"""The `file`/`url` exchange: a hash list at a local path, an HTTPS URL or an s3:// URL
(s3_list.py), read again at each sync, through the same parser as `indexer import`
(hashlists.py).

A list only says what exists, so the list's content digest names the listing: pages are
slices of it, the checkpoint is (listing, offset), and the last page ends the listing, which
deletes from the bank what the exchange had put there and this listing no longer holds (see
`ExchangePage`). A sync that resumes on the same content carries on at its offset; if the list
changed meanwhile it starts the new listing from the top (deletions only ever follow a
listing read whole). An unchanged list that was read whole is a sync with nothing to do.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

from hashsvc.errors import HashsvcError, LineProblem
from hashsvc.store.exchange_model import Credentials, ExchangePage, UpstreamEntry
from indexer.exchanges.web_api import LOOPBACK
from indexer.hashlists import detect_format, read_hash_list

DEFAULT_PAGE_SIZE = 10_000
FETCH_TIMEOUT = 60.0
FETCH_ATTEMPTS = 4
MAX_RETRY_WAIT = 30.0


class FileListExchange:
    def __init__(self, config: dict[str, Any], credentials: Credentials | None) -> None:
        source = config.get("source")
        if not isinstance(source, str) or not source:
            raise HashsvcError("a file exchange needs a source: a path, or an https:// or "
                               "s3:// URL")
        if _is_url(source) and urllib.parse.urlsplit(source).password is not None:
            raise HashsvcError("a source URL must not hold a password (it would be stored and "
                               "shown): name an environment variable or a file with "
                               "--credentials-env or --credentials-file instead")
        if source.startswith("s3://"):
            from indexer.exchanges.s3_list import s3_location

            s3_location(source)
        self.source = source
        self.credentials = credentials
        self.format = config.get("format")
        self.algorithm = config.get("algorithm")
        self.columns: dict[str, str] | None = config.get("columns")
        self.s3_endpoint_url: str | None = config.get("s3_endpoint_url")
        self.page_size = int(config.get("page_size", DEFAULT_PAGE_SIZE))
        if self.page_size < 1:
            raise HashsvcError(f"page_size must be at least 1, got {self.page_size}")
        self._listing: tuple[str, list[UpstreamEntry]] | None = None  # read once per sync

    def fetch(self, checkpoint: str | None) -> ExchangePage:
        digest, entries = self._read()
        state = json.loads(checkpoint) if checkpoint else {}
        if state.get("listing") == digest and state.get("done"):
            return ExchangePage((), checkpoint or "", more=False)  # the list has not changed
        offset = int(state["offset"]) if state.get("listing") == digest else 0
        end = min(offset + self.page_size, len(entries))
        done = end >= len(entries)
        return ExchangePage(entries[offset:end],
                            json.dumps({"listing": digest, "offset": end, "done": done}),
                            more=not done, listing=digest, ends_listing=done)

    def _read(self) -> tuple[str, list[UpstreamEntry]]:
        if self._listing is None:
            content = self._download() if _is_url(self.source) else self._read_path()
            self._listing = hashlib.sha256(content).hexdigest(), self._parse(content)
        return self._listing

    def _read_path(self) -> bytes:
        try:
            return Path(self.source).read_bytes()
        except OSError as err:
            raise HashsvcError(f"file exchange: cannot read {self.source}: "
                               f"{err.strerror or err}") from None

    def _download(self) -> bytes:
        """The list's bytes, whole: 429 and 5xx answers and dropped connections are tried
        again (at most `FETCH_ATTEMPTS` times, waiting as Retry-After says, up to
        `MAX_RETRY_WAIT` s); a body shorter than its Content-Length is an error, never a
        shorter list (which would delete the rest)."""
        url = urllib.parse.urlsplit(self.source)
        if url.scheme == "s3":
            from indexer.exchanges.s3_list import read_s3_list

            return read_s3_list(self.source, self.s3_endpoint_url, self.credentials)
        if url.scheme != "https" and not (url.scheme == "http" and url.hostname in LOOPBACK):
            raise HashsvcError(f"url exchange: {self.source!r} must be https:// or s3:// "
                               "(plain http only on loopback)")
        request = urllib.request.Request(self.source)
        if self.credentials is not None:
            from indexer.exchanges import read_secret

            request.add_header("Authorization", f"Bearer {read_secret(self.credentials)}")
        problem = ""
        for attempt in range(1, FETCH_ATTEMPTS + 1):
            wait = 0.0
            try:
                with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
                    body: bytes = response.read()
                    return body
            except urllib.error.HTTPError as err:
                if err.code != 429 and err.code < 500:
                    raise HashsvcError(f"url exchange: {self.source} answered HTTP "
                                       f"{err.code}") from None
                problem = f"HTTP {err.code}"
                wait = _retry_after(err.headers.get("Retry-After"), attempt)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
                problem = str(getattr(err, "reason", None) or type(err).__name__)
                wait = _retry_after(None, attempt)
            if attempt < FETCH_ATTEMPTS:
                time.sleep(wait)
        raise HashsvcError(f"url exchange: cannot fetch {self.source}: {problem} "
                           f"({FETCH_ATTEMPTS} attempts); the next sync resumes")

    def _parse(self, content: bytes) -> list[UpstreamEntry]:
        """Every entry of the list, or an error naming the list's bad lines: a list with a
        bad line applies nothing (half a list would delete the other half)."""
        name = PurePosixPath(urllib.parse.urlsplit(self.source).path).name or "list"
        fmt = detect_format(Path(name), self.format)
        with tempfile.TemporaryDirectory(prefix="hashsvc-exchange-") as folder:
            path = Path(folder) / name
            path.write_bytes(content)
            entries: dict[str, UpstreamEntry] = {}
            problems: list[str] = []
            for item in read_hash_list(path, fmt, self.algorithm, self.columns):
                if isinstance(item, LineProblem):
                    problems.append(f"{self.source}:{item.line}: {item.reason}")
                    continue
                upstream_id = f"{item.algorithm}:{item.hash.hex()}"
                entries.setdefault(upstream_id, UpstreamEntry(
                    upstream_id, item.algorithm, item.hash, external_id=item.external_id))
        if problems:
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            raise HashsvcError("file exchange: the list has bad lines, so nothing was applied: "
                               + "; ".join(problems[:5]) + more)
        if not entries:
            raise HashsvcError(f"file exchange: {self.source} lists no hashes; refusing to "
                               "delete every entry the exchange supplied")
        return list(entries.values())


def _is_url(source: str) -> bool:
    return "://" in source


def _retry_after(header: str | None, attempt: int) -> float:
    """Seconds to wait before attempt `attempt + 1`: the server's Retry-After (in seconds)
    if it gave one, else doubling from one second; never more than `MAX_RETRY_WAIT`."""
    try:
        wait = float(header) if header is not None else 2.0 ** (attempt - 1)
    except ValueError:  # an HTTP date: not worth parsing for a bounded wait
        wait = MAX_RETRY_WAIT
    return min(max(wait, 0.0), MAX_RETRY_WAIT)
