"""The asyncio client for the scan path, for platforms whose upload handlers are async.

Same behaviour as `Client` (deadlines, retries on UNAVAILABLE, API key, one or several server
addresses balanced per call, errors mapped to
`hashsvc_client.errors`); administration stays on the sync `Client`, as it is not latency-bound.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

import grpc

from hashsvc_client import _channel
from hashsvc_client._channel import HashLike, Target, Tls
from hashsvc_client.errors import map_rpc_error
from hashsvc_client.v1 import scan_pb2, scan_pb2_grpc, types_pb2


class AsyncClient:
    def __init__(
        self,
        target: Target | None = None,
        *,
        api_key: str | None = None,
        tls: Tls | None = None,
        timeout: float = 10.0,
        max_message_bytes: int = 64 << 20,
    ) -> None:
        self.target, key = _channel.resolve(target, api_key)
        options = _channel.channel_options(max_message_bytes)
        self._channel = (grpc.aio.secure_channel(self.target, tls.credentials(), options)
                         if tls else grpc.aio.insecure_channel(self.target, options))
        self._metadata = _channel.metadata(key)
        self.timeout = timeout
        self._scan = scan_pb2_grpc.ScanServiceStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def scan_image(
        self, image: bytes, *, request_id: str = "", banks: Sequence[str] = (),
        algorithms: Sequence[str] = (), dihedral: bool = True, timeout: float | None = None,
    ) -> types_pb2.ScanResult:
        request = _channel.scan_image_request(image, request_id, banks, algorithms, dihedral)
        try:
            response = await self._scan.ScanImage(request, timeout=timeout or self.timeout,
                                                  metadata=self._metadata)
        except grpc.RpcError as error:
            raise map_rpc_error(error) from None
        return response.result

    async def scan_hashes(
        self, hashes: Iterable[HashLike], *, request_id: str = "", banks: Sequence[str] = (),
        dihedral: bool = True, timeout: float | None = None,
    ) -> types_pb2.ScanResult:
        request = _channel.scan_hashes_request(hashes, request_id, banks, dihedral)
        try:
            response = await self._scan.ScanHashes(request, timeout=timeout or self.timeout,
                                                   metadata=self._metadata)
        except grpc.RpcError as error:
            raise map_rpc_error(error) from None
        return response.result

    async def scan_images(
        self, items: Iterable[tuple[str, bytes]], *, banks: Sequence[str] = (),
        timeout: float | None = None,
    ) -> AsyncIterator[scan_pb2.ScanImagesResponse]:
        """Stream (id, image bytes) items; one response per item, in order."""
        options = _channel.scan_options(banks)
        requests = (scan_pb2.ScanImagesRequest(id=item_id, image=image,
                                               options=options if index == 0 else None)
                    for index, (item_id, image) in enumerate(items))
        try:
            async for response in self._scan.ScanImages(requests, timeout=timeout,
                                                        metadata=self._metadata):
                yield response
        except grpc.RpcError as error:
            raise map_rpc_error(error) from None
