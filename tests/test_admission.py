"""Admission and streams against the real server: every refusal counted, no client holds it all."""

from __future__ import annotations

import argparse
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hashsvc_client import Client, ResourceExhausted
from hashsvc_client.v1 import scan_pb2, scan_pb2_grpc

from hashsvc import config
from hashsvc.errors import HashsvcError
from hashsvc.server.streams import ReadAhead
from tests.conftest import PHOTOS
from tests.server_process import ServerProcess
from tests.test_observability import _samples, _value
from tests.test_server import BRIDGE_PDQ, _seed_bridge_bank

PHOTO = max(sorted(PHOTOS.glob("*.jpg"))[:40], key=lambda p: p.stat().st_size).read_bytes()


class HeldStream:
    """A ScanImages stream answered once, then kept open by a client that sends nothing more."""

    def __init__(self, channel: grpc.Channel, key: str) -> None:
        self._outbox: queue.Queue[scan_pb2.ScanImagesRequest | None] = queue.Queue()
        self._outbox.put(scan_pb2.ScanImagesRequest(id="first", image=PHOTO))
        self.responses = scan_pb2_grpc.ScanServiceStub(channel).ScanImages(
            self._requests(), metadata=(("authorization", f"Bearer {key}"),), timeout=120)

    def _requests(self) -> Iterator[scan_pb2.ScanImagesRequest]:
        while (item := self._outbox.get()) is not None:
            yield item

    def open(self) -> HeldStream:
        assert next(self.responses).id == "first"  # admitted and answered: it holds a slot
        return self

    def close(self) -> None:
        self._outbox.put(None)
        assert list(self.responses) == []

    def abandon(self) -> None:
        """Let the client's request thread finish after the call has ended."""
        self._outbox.put(None)


def _connection(target: str) -> grpc.Channel:
    """A channel with a connection of its own (channels share connections by default)."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def _burst(target: str, key: str, calls: int) -> dict[str, int]:
    """`calls` ScanImage calls at once over 4 connections; outcomes as the clients saw them."""
    outcomes: dict[str, int] = {"ok": 0, "overloaded": 0}
    lock = threading.Lock()
    start = threading.Barrier(calls)
    clients = [Client(target, api_key=key) for _ in range(4)]

    def call(client: Client) -> None:
        start.wait(60)
        try:
            client.scan_image(PHOTO, timeout=120)
            outcome = "ok"
        except ResourceExhausted as err:
            outcome = "overloaded" if "server overloaded" in err.details else err.details
        with lock:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    threads = [threading.Thread(target=call, args=(clients[n % 4],)) for n in range(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    return outcomes


def _await_count(server: ServerProcess, method: str, code: str, expected: int) -> None:
    """Wait until the server has recorded `expected` calls of `method` ending in `code`.

    The client can see its call end a moment before the handler's thread records it, so the
    count is polled (bounded by a hang guard), never read once."""
    deadline = time.monotonic() + 60
    while True:
        samples = _samples(server.scrape())
        if _value(samples, "hashsvc_requests_total", method=method, code=code) == expected:
            return
        assert time.monotonic() < deadline, {
            key: value for key, value in samples.items() if key[0] == "hashsvc_requests_total"}
        time.sleep(0.1)


def test_every_refusal_is_ours_and_counted(tmp_path: Path) -> None:
    """Before the fix most of a burst was refused by gRPC's own limit ("Concurrent RPC limit
    exceeded!"), which neither hashsvc_requests_total nor hashsvc_rejected_requests_total saw."""
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    with ServerProcess(home, "--max-concurrent-rpcs", "2") as server:
        key = server.keys["scanner"]
        # Both slots held by open streams: every call of a burst is refused, whatever the timing.
        with grpc.insecure_channel(server.target) as channel:
            held = [HeldStream(channel, key).open() for _ in range(2)]
            assert _burst(server.target, key, 40) == {"ok": 0, "overloaded": 40}
            for stream in held:
                stream.close()
        # Slots free: a burst splits between completed and refused, and every call is counted.
        outcomes = _burst(server.target, key, 60)
        # The first call of the burst always finds a free slot; the split is the machine's.
        assert outcomes["ok"] >= 1 and sum(outcomes.values()) == 60, outcomes
        samples = _samples(server.scrape())
        refused = 40 + outcomes["overloaded"]
        assert _value(samples, "hashsvc_requests_total", method="ScanImage",
                      code="RESOURCE_EXHAUSTED") == refused
        assert _value(samples, "hashsvc_rejected_requests_total", reason="overload") == refused
        assert _value(samples, "hashsvc_requests_total", method="ScanImage",
                      code="OK") == outcomes["ok"]
        assert "Concurrent RPC limit exceeded" not in server.log


def test_streams_are_limited_per_key_and_per_connection(tmp_path: Path) -> None:
    """Before the fix one client could hold every slot with streams that never end."""
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    flags = ("--max-concurrent-rpcs", "8", "--max-streams-per-key", "3",
             "--max-streams-per-connection", "2")
    with ServerProcess(home, *flags) as server:
        scanner, admin = server.keys["scanner"], server.keys["admin"]
        with _connection(server.target) as first, _connection(server.target) as second, \
                _connection(server.target) as third:
            held = [HeldStream(first, scanner).open(), HeldStream(first, scanner).open()]
            with pytest.raises(grpc.RpcError) as refused:
                HeldStream(first, admin).open()  # another key, the same connection
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_streams_per_connection" in refused.value.details()
            held.append(HeldStream(second, scanner).open())
            with pytest.raises(grpc.RpcError) as refused:
                HeldStream(third, scanner).open()  # a new connection, the same key
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_streams_per_key" in refused.value.details()
            held.append(HeldStream(third, admin).open())  # other keys still get in
            with Client(server.target, api_key=scanner) as client:  # and unary calls
                assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
            for stream in held:
                stream.close()
            held = [HeldStream(third, scanner).open()]  # closed streams free their count
            held[0].close()
        samples = _samples(server.scrape())
        assert _value(samples, "hashsvc_rejected_requests_total", reason="streams") == 2


def test_idle_streams_end_and_free_their_slot(tmp_path: Path) -> None:
    """Before the fix a stream without a deadline that sent nothing held its slot forever."""
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    flags = ("--max-concurrent-rpcs", "1", "--client-idle-timeout", "1")
    with ServerProcess(home, *flags) as server:
        key = server.keys["scanner"]
        with grpc.insecure_channel(server.target) as channel:
            held = HeldStream(channel, key).open()  # answered once, then silent
            with pytest.raises(grpc.RpcError) as ended:
                next(held.responses)
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "client_idle_timeout" in ended.value.details()
            held.abandon()
            # Its slot is free again: the one slot takes a call.
            with Client(server.target, api_key=key) as client:
                assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched


def test_a_client_that_stops_reading_loses_its_stream_not_the_slot(tmp_path: Path) -> None:
    """A client that sends but never reads: the server's answers back up until gRPC's send
    blocks, and after `client_idle_timeout` the stream is cancelled and its slot freed."""
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    flags = ("--max-concurrent-rpcs", "1", "--client-idle-timeout", "1")
    with ServerProcess(home, *flags) as server:
        key = server.keys["scanner"]

        def requests() -> Iterator[scan_pb2.ScanImagesRequest]:
            for n in range(20_000):  # bounded: the server's send blocks long before this
                yield scan_pb2.ScanImagesRequest(id=f"{n:06d}" + "x" * 4000)  # an error answer

        with grpc.insecure_channel(server.target) as channel:
            call = scan_pb2_grpc.ScanServiceStub(channel).ScanImages(
                requests(), metadata=(("authorization", f"Bearer {key}"),), timeout=300)
            deadline = time.monotonic() + 120  # hang guard only
            while "the client to take an answer" not in server.log:
                assert time.monotonic() < deadline, server.log
                time.sleep(0.1)
            # The one slot is free again while the unread call is still open on the client.
            with Client(server.target, api_key=key) as client:
                assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
            call.cancel()
        _await_count(server, "ScanImages", "DEADLINE_EXCEEDED", 1)


@pytest.mark.parametrize("flag", ["--max-streams-per-key", "--client-idle-timeout",
                                  "--max-concurrent-rpcs"])
def test_admission_bounds_must_be_positive(flag: str) -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    with pytest.raises(HashsvcError, match="must be above 0"):
        config.load(parser.parse_args([flag, "0"]), {})


def test_an_upload_that_never_arrives_ends_and_frees_its_slot(tmp_path: Path) -> None:
    """A unary call whose client sends its headers but never its request: gRPC waited for the
    request forever, on one of the slots, before the handler (and so any check) ran."""
    home = tmp_path / "home"
    _seed_bridge_bank(home)
    flags = ("--max-concurrent-rpcs", "1", "--client-idle-timeout", "1")
    with ServerProcess(home, *flags) as server, grpc.insecure_channel(server.target) as channel:
        key = server.keys["scanner"]
        never: threading.Event = threading.Event()

        def nothing() -> Iterator[scan_pb2.ScanHashesRequest]:
            never.wait(120)
            yield from ()

        stuck = channel.stream_unary(  # the unary method, called as if its request streamed
            "/hashsvc.v1.ScanService/ScanHashes",
            request_serializer=scan_pb2.ScanHashesRequest.SerializeToString,
            response_deserializer=scan_pb2.ScanHashesResponse.FromString,
        ).future(nothing(), metadata=(("authorization", f"Bearer {key}"),), timeout=60)
        assert stuck.exception(timeout=90).code() == grpc.StatusCode.CANCELLED  # the server's
        never.set()
        _await_count(server, "ScanHashes", "DEADLINE_EXCEEDED", 1)
        assert "the request to arrive" in server.log
        # The one slot is free again. The client saw CANCELLED a moment before the server's
        # task ended (it is counted until then), so a call in that moment may still be refused:
        # a bounded number of tries, not a sleep that a busy machine could outrun.
        with Client(server.target, api_key=key) as client:
            for attempt in range(100):
                try:
                    assert client.scan_hashes([("pdq", BRIDGE_PDQ)]).matched
                    break
                except grpc.RpcError as refused:
                    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
                    assert attempt < 99, "the slot was never freed"
                    time.sleep(0.1)


def test_read_ahead_holds_items_and_bytes_and_one_large_item_alone() -> None:
    def always() -> bool:
        return True

    ahead = ReadAhead(max_items=3, max_bytes=100)
    assert ahead.wait_for_room(always) and ahead.take(60, always)
    assert ahead.wait_for_room(always) and ahead.take(40, always)
    # 100 bytes held: nothing more is read until an item is scanned; a call that ended gives up.
    assert not ahead.wait_for_room(lambda: False)
    ahead.scanned(60)
    assert ahead.wait_for_room(always)
    assert not ahead.take(70, lambda: False)  # 40 + 70 > 100
    assert ahead.take(60, always)
    # Three items held: the item window is full although bytes remain.
    ahead.scanned(40)
    ahead.scanned(60)
    assert not ahead.wait_for_room(lambda: False)
    for _ in range(3):
        ahead.answered()
    # Nothing held: a request over the whole byte budget is taken, alone.
    assert ahead.wait_for_room(always) and ahead.take(500, always)
    assert not ahead.wait_for_room(lambda: False)
