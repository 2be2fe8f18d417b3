"""Types of the C kernel (hashsvc/matching/_mih.c); hashsvc.matching.mih is its only caller."""

from typing import Any

import numpy.typing as npt

def search(
    codes: npt.NDArray[Any], ids: npt.NDArray[Any], offsets: npt.NDArray[Any],
    cuts: npt.NDArray[Any], probe_table: npt.NDArray[Any], probe_flips: npt.NDArray[Any],
    queries: npt.NDArray[Any], radius: int, scan_limit: int, /,
) -> tuple[bytes, bytes, bytes]: ...
