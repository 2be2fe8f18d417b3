"""Errors as values with a code and a human message.

The codes are named after gRPC status codes on purpose: the server maps an error to a status in one
line, the CLI maps it to an exit code in one table, and nobody has to invent a third vocabulary.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DATA_LOSS = "DATA_LOSS"
    UNAVAILABLE = "UNAVAILABLE"
    PERMISSION_DENIED = "PERMISSION_DENIED"


class HashsvcError(Exception):
    """Base of every error hashsvc raises on purpose; `str(err)` is the message a person reads."""

    code: ErrorCode = ErrorCode.INVALID_ARGUMENT
    reason: str = "invalid_argument"  # machine-readable, for streamed per-item errors

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidHashError(HashsvcError):
    """A hash string that is not the right length or not hex, or an unknown algorithm."""

    reason = "invalid_hash"


class ImageError(HashsvcError):
    """Base for every reason an image cannot be hashed; the subclass says which."""

    reason = "invalid_image"


class UnsupportedFormatError(ImageError):
    reason = "unsupported_format"


class TruncatedImageError(ImageError):
    reason = "truncated"


class ImageTooLargeError(ImageError):
    reason = "too_large"


class ImageTooSmallError(ImageError):
    reason = "too_small"


class CorruptImageError(ImageError):
    reason = "corrupt"


class DecodeBudgetExhaustedError(HashsvcError):
    """Decoding this image now would overrun the process's decode memory budget, which other
    calls hold: the image is fine, the server is busy (`hashsvc.hashing.decode_budget`). Retry."""

    code = ErrorCode.RESOURCE_EXHAUSTED
    reason = "overloaded"


class NotFoundError(HashsvcError):
    code = ErrorCode.NOT_FOUND
    reason = "not_found"


class AlreadyExistsError(HashsvcError):
    code = ErrorCode.ALREADY_EXISTS


class OutOfScopeError(HashsvcError):
    """A key scoped to banks tried to create or rename a bank to a name outside its scope."""

    code = ErrorCode.PERMISSION_DENIED
    reason = "permission_denied"


class SnapshotError(HashsvcError):
    """A snapshot that is missing, unreadable or fails its checksums; never half-loaded."""

    code = ErrorCode.DATA_LOSS


class NoSnapshotError(SnapshotError):
    code = ErrorCode.FAILED_PRECONDITION


class SnapshotFetchError(SnapshotError):
    """A snapshot in a repository that cannot be used as it is: an object `missing`, `partial`
    (shorter than the manifest says) or `corrupt` (wrong sha256), or a manifest `invalid`.
    Retrying does not help until the repository changes, so the version is refused."""

    def __init__(self, message: str, fetch_reason: str) -> None:
        super().__init__(message)
        self.fetch_reason = fetch_reason


class RepositoryUnavailableError(HashsvcError):
    """The snapshot repository (a bucket) could not be reached or answered with an error: a
    replica keeps serving what it has and tries again on its next poll."""

    code = ErrorCode.UNAVAILABLE
    reason = "unavailable"


class StoreUnavailableError(HashsvcError):
    """The store's server cannot be reached (a wrong URL, or PostgreSQL down): retry later."""

    code = ErrorCode.UNAVAILABLE
    reason = "store_unavailable"


class WriterBusyError(HashsvcError):
    """Another process holds a single-writer lock (e.g. publishing); the message names it."""

    code = ErrorCode.FAILED_PRECONDITION
    reason = "writer_busy"


class NotLoadedError(HashsvcError):
    """A scanner asked to scan before any snapshot was loaded: retry shortly."""

    code = ErrorCode.UNAVAILABLE
    reason = "not_loaded"


class ReportUnreadableError(HashsvcError):
    """An evaluation report is there but cannot be read (half-copied, or from another version):
    refused with what is wrong, rather than shown with figures missing."""

    code = ErrorCode.DATA_LOSS
    reason = "report_unreadable"


class ImportFileError(HashsvcError):
    """A hash-list file with bad lines; nothing from it was stored."""

    def __init__(self, path: str, problems: list[LineProblem]) -> None:
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(
            f"{path}: {len(problems)} invalid line(s), nothing from this file was stored "
            f"(use --skip-invalid to import the valid lines):\n{shown}{more}"
        )
        self.path = path
        self.problems = problems


class LineProblem:
    """One rejected line of a hash list: where, and why."""

    __slots__ = ("line", "path", "reason")

    def __init__(self, path: str, line: int, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"

    def __repr__(self) -> str:
        return f"LineProblem({self.path!r}, {self.line}, {self.reason!r})"
