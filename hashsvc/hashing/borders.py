"""Finding near-uniform borders (padding, letterbox bars, a plain backdrop) to trim before hashing.

PDQ hashes the whole frame, so a copy with a 20% border is ~130 bits from its original (measured
on photos-cc0). Cutting away every outer row and column that is one flat colour brings a padded
copy back to the original's own content box, whatever the border's colour: trimming repeats
until no edge is uniform, so a black pad around a white backdrop goes too, on the copy and on
the original alike, and both land on the same box.

That full trim cuts too far when the original has a near-uniform edge of its own (about a third
of real photos: sky, a studio backdrop): the copy trims past the original's frame and no longer
matches the original's plain hash, the only one a hash-only bank (an imported list) holds. So
`trim_boxes` also gives the box with only the *added* border cut away: one pass per axis that
stops at the first line whose colour differs from the outermost line's (the border's colour),
and, when both ends of an axis have a border, cuts only the narrower width from each (pads and
letterbox bars are symmetric; a sky of the pad's colour makes one end look wider). A scan
queries both.

Work happens on luma of at most `DETECT_SIDE` px per axis; the box is scaled back, which costs
well under 1% of a side (PDQ starts to drift at ~1% per side).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

DETECT_SIDE = 512
TOLERANCE = 20.0  # luma levels a border pixel may differ from its line's mean (JPEG noise)
MIN_UNIFORM = 0.98  # share of a line's pixels that must be within the tolerance
MIN_KEEP = 0.25  # a box narrower than this share of a side is content, not a border: no trim


class Box(NamedTuple):
    top: int
    bottom: int  # exclusive
    left: int
    right: int  # exclusive

    def scaled(self, row_factor: float, col_factor: float) -> Box:
        return Box(round(self.top * row_factor), round(self.bottom * row_factor),
                   round(self.left * col_factor), round(self.right * col_factor))


def trim_box(luma: npt.NDArray[Any]) -> Box | None:
    """The content box inside the uniform borders of `luma` (float or uint8), or None if there
    is nothing to trim (no border, a flat image, or a box too small to be anything but content)."""
    rows, cols = luma.shape
    top, bottom, left, right = 0, rows, 0, cols
    for _ in range(4):  # each pass can expose a new uniform edge (a pad around a backdrop)
        before = (top, bottom, left, right)
        lead, trail = _uniform_run(luma[top:bottom, left:right])
        top, bottom = top + lead, bottom - trail
        if bottom <= top:
            return None
        lead, trail = _uniform_run(luma[top:bottom, left:right].T)
        left, right = left + lead, right - trail
        if right <= left or (top, bottom, left, right) == before:
            break
    if (bottom - top) < MIN_KEEP * rows or (right - left) < MIN_KEEP * cols:
        return None
    box = Box(top, bottom, left, right)
    return None if box == Box(0, rows, 0, cols) else box


def trim_boxes(luma: npt.NDArray[Any]) -> list[Box]:
    """The distinct boxes worth hashing besides the whole frame: the fully trimmed box
    (`trim_box`) and the box with only the added border cut (`added_border_box`)."""
    boxes: list[Box] = []
    for box in (trim_box(luma), added_border_box(luma)):
        if box is not None and box not in boxes:
            boxes.append(box)
    return boxes


def added_border_box(luma: npt.NDArray[Any]) -> Box | None:
    """The box inside the border that was most likely added: on each side, the uniform lines of
    the outermost line's colour, evened out between opposite sides (`_symmetric`), rows first,
    then columns of what is left (a pad or letterbox bars); None if nothing is trimmed or the
    box is too small (see `trim_box`)."""
    rows, cols = luma.shape
    lead, trail = _symmetric(*_uniform_run(luma, same_colour=True))
    top, bottom = lead, rows - trail
    if bottom - top < MIN_KEEP * rows:
        return None
    lead, trail = _symmetric(*_uniform_run(luma[top:bottom].T, same_colour=True))
    left, right = lead, cols - trail
    if right - left < MIN_KEEP * cols:
        return None
    box = Box(top, bottom, left, right)
    return None if box == Box(0, rows, 0, cols) else box


def _symmetric(lead: int, trail: int) -> tuple[int, int]:
    """A border at both ends of an axis is cut to the narrower one's width at each (an added
    pad is symmetric); a border at one end only (a status bar) is left as found."""
    return (min(lead, trail),) * 2 if lead and trail else (lead, trail)


def _uniform_run(region: npt.NDArray[Any], *, same_colour: bool = False) -> tuple[int, int]:
    """How many leading and trailing rows of `region` are uniform (with `same_colour`, also
    within the tolerance of the outermost row's colour on that side).

    A row is compared with its own mean, not its median: 5x cheaper, and the few outliers a
    uniform row may have (JPEG ringing) move the mean by a few levels only."""
    mean = region.mean(axis=1, keepdims=True)
    uniform = (np.abs(region - mean) <= TOLERANCE).mean(axis=1) >= MIN_UNIFORM
    if same_colour:
        means = mean[:, 0]
        lead_run = uniform & (np.abs(means - means[0]) <= TOLERANCE)
        trail_run = uniform & (np.abs(means - means[-1]) <= TOLERANCE)
        return _run_length(lead_run), _run_length(trail_run[::-1])
    if uniform.all():
        return len(uniform), 0
    return _run_length(uniform), _run_length(uniform[::-1])


def _run_length(flags: npt.NDArray[np.bool_]) -> int:
    """How many leading entries of `flags` are True."""
    return len(flags) if flags.all() else int(np.argmin(flags))
