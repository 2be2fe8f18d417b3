"""Whole numbers typed into console forms and URLs, read strictly.

Why not `str.isdigit()` then `int()`: `isdigit` holds for characters `int` refuses ("²"), and
`int` makes numbers no proto field can hold (a threshold of 99999999999 in an int32); either
was a 500, with a traceback in the log, where the analyst should see the form's own message.
Here a number is ASCII digits within the field's range, or it is refused like any other typo.
"""

from __future__ import annotations

INT32_MAX = 2**31 - 1  # thresholds, margins, variants (int32 in types.proto)
INT64_MAX = 2**63 - 1  # entry ids (int64)


def whole_number(text: str, maximum: int) -> int | None:
    """`text` as a number from 0 to `maximum`, or None if it is anything else."""
    if not text.isascii() or not text.isdigit() or len(text) > len(str(maximum)):
        return None
    value = int(text)
    return value if value <= maximum else None
