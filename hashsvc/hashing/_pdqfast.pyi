"""Types of the C kernel (hashsvc/hashing/_pdqfast.c), called by hashsvc.hashing.fastpdq only."""

from typing import Any

import numpy.typing as npt

def downsample(
    pixels: npt.NDArray[Any],
    rows: int,
    cols: int,
    channels: int,
    is_float: bool,
    full_rows: int,
    full_cols: int,
    row_ratio: tuple[int, int],
    col_ratio: tuple[int, int],
) -> tuple[bytes, int]: ...

def pdq(
    pixels: npt.NDArray[Any],
    rows: int,
    cols: int,
    channels: int,
    is_float: bool,
    full_rows: int,
    full_cols: int,
    row_ratio: tuple[int, int],
    col_ratio: tuple[int, int],
    dct: bytes,
) -> tuple[bytes, int, bytes]: ...

def near_median(coefficients: bytes, margin: float) -> int: ...
