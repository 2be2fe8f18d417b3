"""ScanService: thin translation between the contract and the scanner."""

from __future__ import annotations

import queue
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import grpc
from hashsvc_client.v1 import scan_pb2, scan_pb2_grpc, types_pb2

from hashsvc.errors import HashsvcError
from hashsvc.hashing.algorithms import ALGORITHMS
from hashsvc.hashing.imaging import Upload
from hashsvc.limits import LIMITS, check_request_id, quote
from hashsvc.scanner import ComputedHash, ScanResult
from hashsvc.server import convert, scope
from hashsvc.server.interceptors import caller, protocol
from hashsvc.server.observe import ScanObserver
from hashsvc.server.runtime import Runtime
from hashsvc.server.status import STATUS, abort, check_deadline
from hashsvc.server.streams import ClientWatch, ReadAhead

MAX_HASHES_PER_CALL = 10_000


def _unscreened(result: ScanResult, uploads: int = 1) -> ScanResult:
    return result


def _uploads(hashes: Sequence[types_pb2.Hash]) -> int:
    """The uploads a ScanHashes call stands for, to the flood guard, whose window counts
    uploads: one per plain hash (a rotated or flipped variant belongs to an upload already
    counted), at least one. An upload sent with several kinds (PDQ and MD5) counts once per
    kind, which only makes each entry's share look smaller: never a false quarantine."""
    return max(1, sum(1 for h in hashes if h.transform in _PLAIN))


_PLAIN = (types_pb2.TRANSFORM_UNSPECIFIED, types_pb2.TRANSFORM_IDENTITY)


def _request_id() -> str:
    """32 random hex digits, like uuid4().hex, without building a UUID object per call."""
    return secrets.token_hex(16)


class ScanServicer(scan_pb2_grpc.ScanServiceServicer):
    def __init__(
        self, runtime: Runtime, stream_pool: ThreadPoolExecutor, observer: ScanObserver,
        watch: ClientWatch,
    ) -> None:
        self._runtime = runtime
        self._scanner = runtime.scanner
        guard = runtime.flood_guard
        self._screen: Callable[[ScanResult, int], ScanResult] = (
            guard.screen if guard is not None else _unscreened)
        self._observe = observer
        self._stream_pool = stream_pool
        self._watch = watch

    def ScanImage(
        self, request: scan_pb2.ScanImageRequest, context: grpc.ServicerContext
    ) -> scan_pb2.ScanImageResponse:
        try:
            request_id = check_request_id(request.request_id, "request_id") or _request_id()
            options = convert.options_from_proto(request.options, scope.current())
            check_deadline(context, "decoding")
            result = self._screen(self._scanner.scan_image(request.image, options), 1)
        except HashsvcError as err:
            self._observe.rejected(err)
            abort(context, err)
        self._observe.scanned(method="ScanImage", request_id=request_id, caller=caller.get(),
                              result=result, image_bytes=len(request.image),
                              protocol=protocol.get())
        return scan_pb2.ScanImageResponse(result=convert.result_to_proto(result, request_id))

    def ScanHashes(
        self, request: scan_pb2.ScanHashesRequest, context: grpc.ServicerContext
    ) -> scan_pb2.ScanHashesResponse:
        try:
            request_id = check_request_id(request.request_id, "request_id") or _request_id()
            result = self._screen(
                self._scan_hashes(request.hashes, request.options, scope.current()),
                _uploads(request.hashes))
        except HashsvcError as err:
            self._observe.rejected(err)
            abort(context, err)
        self._observe.scanned(method="ScanHashes", request_id=request_id, caller=caller.get(),
                              result=result, protocol=protocol.get())
        return scan_pb2.ScanHashesResponse(result=convert.result_to_proto(result, request_id))

    def _scan_hashes(
        self, hashes: Sequence[types_pb2.Hash], options: types_pb2.ScanOptions,
        banks: frozenset[str] | None,
    ) -> ScanResult:
        messages = list(hashes)
        if not messages:
            raise HashsvcError("no hashes given: send at least one")
        if len(messages) > MAX_HASHES_PER_CALL:
            raise HashsvcError(
                f"{len(messages):,} hashes in one call; the limit is {MAX_HASHES_PER_CALL:,} "
                "(use several calls or the ScanImages stream)"
            )
        values = convert.hashes_from_proto(messages, "hashes")
        return self._scanner.scan_hashes(values, convert.options_from_proto(options, banks),
                                         convert.transforms_from_proto(messages, "hashes"))

    def HashImage(
        self, request: scan_pb2.HashImageRequest, context: grpc.ServicerContext
    ) -> scan_pb2.HashImageResponse:
        try:
            algorithms = [convert.algorithm_name(a, "algorithms") for a in request.algorithms]
            upload = Upload(request.image, limits=self._scanner.limits)
            # Reference-exact: HashImage output is what platforms put in lists and share.
            hashes, _, timings = self._scanner.hash_upload(
                upload, algorithms or list(ALGORITHMS), exact=True)
        except HashsvcError as err:
            self._observe.rejected(err)
            abort(context, err)
        return scan_pb2.HashImageResponse(
            hashes=[convert.computed_hash_to_proto(ComputedHash(h)) for h in hashes],
            timings=convert.timings_to_proto(timings),
        )

    def ScanImages(
        self, requests: Iterator[scan_pb2.ScanImagesRequest], context: grpc.ServicerContext
    ) -> Iterator[scan_pb2.ScanImagesResponse]:
        """Items run on a shared pool, within the stream's read-ahead; answers keep order.

        A reader thread takes requests off the stream only while `ReadAhead` has room, so HTTP/2
        flow control holds a fast sender back instead of its items piling up in server memory;
        meanwhile every finished item is answered at once, so a client that waits for each
        answer before sending more is never stalled behind a window it will not fill. A stream
        that waits on its client for `client_idle_timeout` ends (see streams.py).
        """
        config = self._runtime.config
        read_ahead = ReadAhead(config.stream_window, config.stream_buffer_bytes)
        ordered: queue.SimpleQueue[Future[scan_pb2.ScanImagesResponse] | None] = (
            queue.SimpleQueue()
        )
        name = caller.get()  # pool threads do not inherit the call's context variables
        banks = scope.current()

        def read() -> None:
            defaults = types_pb2.ScanOptions()
            first = True
            try:
                while read_ahead.wait_for_room(context.is_active):
                    request = next(requests, None)
                    if request is None:
                        return
                    if first and request.HasField("options"):
                        defaults = request.options
                    first = False
                    options = request.options if request.HasField("options") else defaults
                    size = request.ByteSize()
                    if not read_ahead.take(size, context.is_active):
                        return
                    future = self._stream_pool.submit(self._scan_item, request, options, name,
                                                      banks)

                    def freed(_done: Future[scan_pb2.ScanImagesResponse], size: int = size) -> None:
                        read_ahead.scanned(size)

                    future.add_done_callback(freed)
                    ordered.put(future)
            except grpc.RpcError:
                pass  # the client went away mid-stream: nothing left to answer
            finally:
                ordered.put(None)

        threading.Thread(target=read, name="stream-reader", daemon=True).start()
        stream = id(read_ahead)
        try:
            while True:
                try:
                    # Nothing pending while this waits: the stream waits on its client.
                    future = ordered.get(timeout=self._watch.timeout)
                except queue.Empty:
                    context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                  f"no request for {self._watch.timeout:g} s while "
                                  "nothing was pending: stream ended (client_idle_timeout)")
                if future is None:
                    return
                response = future.result()
                read_ahead.answered()
                self._watch.waiting(stream, context, "the client to take an answer")
                yield response
                self._watch.done(stream)
        finally:
            self._watch.done(stream)

    def _scan_item(
        self, request: scan_pb2.ScanImagesRequest, options: types_pb2.ScanOptions, name: str,
        banks: frozenset[str] | None,
    ) -> scan_pb2.ScanImagesResponse:
        try:
            check_request_id(request.id, "item id")
            item = request.WhichOneof("item")
            if item == "image":
                result = self._scanner.scan_image(
                    request.image, convert.options_from_proto(options, banks),
                    name=f"item {quote(request.id)}")
            elif item == "hashes":
                result = self._scan_hashes(request.hashes.hashes, options, banks)
            else:
                raise HashsvcError(f"item {quote(request.id)}: send an image or hashes")
            result = self._screen(result, _uploads(request.hashes.hashes) if item == "hashes"
                                  else 1)
        except HashsvcError as err:
            self._observe.rejected(err)
            error = scan_pb2.ItemError(code=STATUS[err.code].value[0], message=err.message,
                                       reason=err.reason)
            return scan_pb2.ScanImagesResponse(id=request.id[:LIMITS.request_id_chars], error=error)
        self._observe.scanned(method="ScanImages", request_id=request.id, caller=name,
                              result=result, image_bytes=len(request.image))
        return scan_pb2.ScanImagesResponse(id=request.id,
                                           result=convert.result_to_proto(result, request.id))

