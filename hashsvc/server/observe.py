"""What the server records about each scan: metrics and the audit trail, in one place.

Kept out of the scanner so that the scanner stays a pure use case (the indexer and the evaluation
tools call it too, and must not emit server metrics).
"""

from __future__ import annotations

from hashsvc import metrics
from hashsvc.audit import AuditLog
from hashsvc.errors import ErrorCode, HashsvcError, ImageTooLargeError, ImageTooSmallError
from hashsvc.scanner import ScanResult

_DECODE = metrics.STAGE_SECONDS.labels("decode")
_HASH = metrics.STAGE_SECONDS.labels("hash")
_SEARCH = metrics.STAGE_SECONDS.labels("search")


class ScanObserver:
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def scanned(
        self, *, method: str, request_id: str, caller: str, result: ScanResult,
        image_bytes: int = 0, protocol: str = "grpc",
    ) -> None:
        timings = result.timings
        if image_bytes:
            metrics.IMAGE_BYTES.observe(image_bytes)
            _DECODE.observe(timings.decode_seconds)
            _HASH.observe(timings.hash_seconds)
            # Only images: the quality a caller sends with a hash is theirs, not a measurement,
            # and observing it once per hash made large ScanHashes batches pay for it.
            for computed in result.hashes:
                if computed.hash.algorithm == "pdq" and computed.hash.quality is not None:
                    metrics.PDQ_QUALITY.observe(computed.hash.quality)
        if result.image_pixels:
            metrics.IMAGE_PIXELS.observe(result.image_pixels)
        _SEARCH.observe(timings.match_seconds)
        for match in result.matches:
            if match.quarantined:
                metrics.FLOOD_QUARANTINED_MATCHES.labels(match.bank).inc()
            else:
                metrics.MATCHES.labels(match.bank, match.algorithm).inc()
        self.audit.scan(method=method, request_id=request_id, caller=caller, result=result,
                        protocol=protocol)

    @staticmethod
    def rejected(error: HashsvcError) -> None:
        if isinstance(error, ImageTooLargeError | ImageTooSmallError):
            metrics.REJECTED.labels("limits").inc()
        elif error.code == ErrorCode.INVALID_ARGUMENT:
            metrics.REJECTED.labels("invalid").inc()
        elif error.code == ErrorCode.RESOURCE_EXHAUSTED:  # the decode memory budget is full
            metrics.REJECTED.labels("overload").inc()
