"""Locust users for hashsvc over gRPC, for teams that already drive their load tests with Locust.

    export HASHSVC_API_KEY=$(cat HOME/bootstrap-admin.key)     # or any key with the scan role
    locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 30s --host 127.0.0.1:50051 \\
        --known-hashes HOME/loadtest-known-pdq.txt --only-summary

Each user holds its own sync `hashsvc_client.Client` (one channel) and calls, with no wait in
between, ScanHashes (three calls in four; `--batch` hashes, `--match-fraction` of them from
`--known-hashes`) and ScanImage (one in four; `--image`, default the ~1 MP JPEG loadgen.py
makes). `--calls N` ends the run after N calls in all instead of after `-t` (smoke tests: bounded
by work, so a busy machine makes the run slower, never empty).
Every call fires Locust's request event: type "grpc", the method as name, its time, and on failure
the client's exception, whose text starts with the gRPC status code.

grpcio's sync API waits inside C, where gevent cannot switch greenlets, so without help one user
would block the whole Locust process. `grpc.experimental.gevent.init_gevent()` routes gRPC's I/O
through gevent; it must run after the standard library is monkey-patched (`import locust` does
that, and the `locust` command imports it before this file) and before any channel exists.

Only loopback hosts are accepted: this workplace forbids load against non-local addresses.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent  # type: ignore[import-untyped]  # locust's own dependency; no stubs
import grpc.experimental.gevent as grpc_gevent
import locust
import locust.exception
from hashsvc_client import Client, HashsvcClientError
from locust.env import Environment

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # locust imports this file by path: make `loadtests` importable
    sys.path.insert(0, str(_ROOT))

from loadtests.loadgen import (  # noqa: E402
    TargetRefused,
    check_loopback,
    default_photo,
    hash_requests,
    load_image,
    make_jpeg,
    read_known_hashes,
)

grpc_gevent.init_gevent()

DEFAULT_HOST = os.environ.get("HASHSVC_SERVER", "127.0.0.1:50051")
log = logging.getLogger("hashsvc.locust")


def _add_options(parser: argparse.ArgumentParser, **_: Any) -> None:
    parser.add_argument("--known-hashes", default="",
                        help="hashsvc: PDQ hex hashes in the snapshot, one a line")
    parser.add_argument("--match-fraction", type=float, default=0.1,
                        help="hashsvc: share of ScanHashes hashes drawn from --known-hashes")
    parser.add_argument("--batch", type=int, default=1, help="hashsvc: hashes per ScanHashes")
    parser.add_argument("--image", default="", help="hashsvc: image for ScanImage "
                        "(default: a photos-cc0 photo upscaled to ~1 MP, JPEG q90)")
    parser.add_argument("--calls", type=int, default=0,
                        help="hashsvc: stop the run after this many calls in all (default: "
                        "no bound; use -t)")


def _refuse_remote_hosts(environment: Environment, **_: Any) -> None:
    """Stop before any user starts if the target is not loopback."""
    host = environment.host or DEFAULT_HOST
    try:
        check_loopback(host)
    except TargetRefused as err:
        log.error("%s", err)
        sys.exit(2)


# Registered by call, not as decorators: locust's `add_listener` is unannotated, and as a decorator
# it would erase these functions' types.
locust.events.init_command_line_parser.add_listener(_add_options)  # type: ignore[no-untyped-call]
locust.events.init.add_listener(_refuse_remote_hosts)  # type: ignore[no-untyped-call]


@functools.cache
def _image(path: str) -> bytes:
    """Made once per process, shared by every user."""
    image = load_image(Path(path)) if path else make_jpeg(default_photo())
    log.info("ScanImage payload: %dx%d, %d bytes", image.width, image.height, len(image.data))
    return image.data


@functools.cache
def _hash_batches(known_path: str, batch: int, match_fraction: float) -> list[Any]:
    """Prebuilt hash lists, so that users spend their time on calls, not on building them."""
    known = read_known_hashes(Path(known_path)) if known_path else []
    return [list(request.hashes)
            for request in hash_requests(batch, known, match_fraction, count=256)]


# Calls made so far by every user of this process (gevent: one thread, no lock needed).
_calls_made = 0
# Three ScanHashes to one ScanImage, in a fixed order, so that any run of four calls has both.
_MIX = ("ScanHashes", "ScanHashes", "ScanImage", "ScanHashes")


class HashsvcUser(locust.User):
    """A platform scanning uploads: mostly hashes computed on its side, some whole images."""

    host = DEFAULT_HOST
    wait_time = locust.constant(0)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self._known = str(getattr(options, "known_hashes", "") or "")
        self._fraction = float(getattr(options, "match_fraction", 0.1))
        self._batch = int(getattr(options, "batch", 1))
        self._image_path = str(getattr(options, "image", "") or "")
        self._random = random.Random()
        self._calls = int(getattr(options, "calls", 0) or 0)
        self.client = Client(self.host, api_key=os.environ.get("HASHSVC_API_KEY"))

    def on_stop(self) -> None:
        self.client.close()

    def _timed(self, name: str, call: Callable[[], Any]) -> None:
        """Run one call and report it to Locust, failed or not; never raise into the task."""
        started = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            length = call().ByteSize()
        except HashsvcClientError as err:
            exception = err
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - started) * 1000,
            response_length=length, exception=exception, context={},
        )

    @locust.task
    def scan(self) -> None:
        global _calls_made
        if self._calls and _calls_made >= self._calls:
            raise locust.exception.StopUser()
        number, _calls_made = _calls_made, _calls_made + 1
        if _MIX[number % len(_MIX)] == "ScanImage":
            image = _image(self._image_path)
            self._timed("ScanImage", lambda: self.client.scan_image(image))
        else:
            hashes = self._random.choice(_hash_batches(self._known, self._batch, self._fraction))
            self._timed("ScanHashes", lambda: self.client.scan_hashes(hashes))
        if self._calls and number + 1 == self._calls and self.environment.runner is not None:
            # The last call is in: end the run, from outside this user's greenlet (quit
            # kills every user, and killing the caller's own greenlet hangs the process).
            gevent.spawn(self.environment.runner.quit)
