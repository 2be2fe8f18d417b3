"""Per-bank matching strategies: how hard hashsvc tries to find an altered copy of a known image.

Plain PDQ survives re-encoding, resizing, blur and overlays, but not borders, letterboxing or
crops (measured with `indexer evaluate`; see the README's "Detection quality"). Each strategy
below fixes one of those weak spots, at a price, so a bank chooses:

- `dihedral` (query side, on by default): also search PDQ's 7 rotated/flipped variants of the
  upload. Free to compute (one DCT), 8 lookups instead of 1.
- `trim_borders` (both sides): hash the upload again with near-uniform borders (padding,
  letterbox bars, a plain backdrop) cut away, and, for known images added from files, store the
  trimmed image's hash beside the plain one. A padded copy then trims back to the original.
- `crop_variants` (index side, known images added from files only): also store the PDQ of
  centred crops that remove N% of each side, one hash per N. PDQ drifts past its threshold when
  a crop differs by ~1% per side, so the list is a grid (default 2, 4, 6, 8, 10).
- `rotation_variants` (index side): also store the PDQ of the image turned N degrees each way
  (corners filled black, size kept), for copies straightened or tilted by a few degrees, which
  plain PDQ loses past ~2 degrees.
- `corner_crops` (index side): also store the PDQ of crops cutting N% from two adjacent sides,
  one per corner kept, for off-centre crops, which centred crops do not cover.
- margins, per way of matching (`WAYS`): a match found through a way (a rotated query, a
  trimmed query, a stored trimmed or cropped variant) must be that way's margin closer than the
  bank's threshold; a match through two ways (a rotated query hitting a crop) takes the larger.
  Each extra hash is one more chance of a false match, and the ways differ in how many they
  add (`indexer evaluate` reports each way's false matches), so each has its own margin: a pure
  rotation already sits ~10-12 bits from its original, and a margin that crop variants need
  would cost rotations recall. `variant_margin` is the margin of every way `margins` leaves
  out, which is how banks configured before per-way margins keep their meaning.

Hash lists imported from other tools hold plain hashes only; they match exactly as before, and
the query-side strategies (dihedral, trimmed uploads) still apply to them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from hashsvc.errors import HashsvcError

DEFAULT_CROP_GRID: tuple[int, ...] = (2, 4, 6, 8, 10)
# The ways of matching a margin can be set for: a rotated/flipped query, a trimmed query, a
# stored trimmed hash, a stored crop.
DIHEDRAL, TRIMMED_QUERY, STORED_TRIMMED, CROP = "dihedral", "trimmed_query", "trimmed", "crop"
ROTATION, CORNER = "rotation", "corner"  # a stored small rotation, a stored corner crop
WAYS: tuple[str, ...] = (DIHEDRAL, TRIMMED_QUERY, STORED_TRIMMED, CROP, ROTATION, CORNER)
MAX_ROTATION_DEGREES = 15
CORNERS = ("tl", "tr", "bl", "br")  # the corner a corner crop keeps
MAX_CROP_PERCENT = 30  # per side: beyond this a "crop" keeps under 40% of each axis
MAX_MARGIN = 64
TRIMMED = "trimmed"  # the variant name of a stored trimmed hash, and of a trimmed query


def crop_variant_name(percent: int) -> str:
    return f"crop_{percent}"


def rotation_variant_name(degrees: int) -> str:
    """`rotate_3` is turned 3 degrees counter-clockwise, `rotate_-3` clockwise."""
    return f"rotate_{degrees}"


def corner_variant_name(percent: int, corner: str) -> str:
    """`corner_4_tl` keeps the top-left corner: 4% cut from the right and from the bottom."""
    return f"corner_{percent}_{corner}"


def variant_way(variant: str) -> str | None:
    """The way of matching a stored variant belongs to (None for the plain hash)."""
    for prefix, way in (("crop_", CROP), ("rotate_", ROTATION), ("corner_", CORNER)):
        if variant.startswith(prefix):
            return way
    return STORED_TRIMMED if variant == TRIMMED else None


@dataclass(frozen=True)
class MatchStrategies:
    dihedral: bool = True
    trim_borders: bool = False
    crop_variants: tuple[int, ...] = ()
    rotation_variants: tuple[int, ...] = ()  # degrees, stored each way
    corner_crops: tuple[int, ...] = ()  # percent cut from two adjacent sides, each corner
    variant_margin: int = 0  # the margin of every way `margins` does not name
    margins: tuple[tuple[str, int], ...] = ()  # (way, bits), overriding variant_margin

    def __post_init__(self) -> None:
        _check_margin("variant margin", self.variant_margin)
        margins = dict(self.margins)
        unknown = sorted(set(margins) - set(WAYS))
        if unknown:
            raise HashsvcError(f"unknown way(s) of matching for a margin: {', '.join(unknown)} "
                               f"(known: {', '.join(WAYS)})")
        for way, bits in margins.items():
            _check_margin(f"{way} margin", bits)
        # Ways equal to the default are dropped, so equal settings compare (and persist) equal.
        object.__setattr__(self, "margins", tuple(
            (way, margins[way]) for way in WAYS
            if way in margins and margins[way] != self.variant_margin))
        crops = tuple(self.crop_variants)
        if any(not isinstance(p, int) or not 1 <= p <= MAX_CROP_PERCENT for p in crops):
            raise HashsvcError(
                f"crop variants must be whole percentages 1-{MAX_CROP_PERCENT} per side, "
                f"got {list(crops)}"
            )
        object.__setattr__(self, "crop_variants", tuple(sorted(set(crops))))
        for name, limit, unit in (("rotation_variants", MAX_ROTATION_DEGREES, "degrees"),
                                  ("corner_crops", MAX_CROP_PERCENT, "percentages")):
            values = tuple(getattr(self, name))
            if any(not isinstance(v, int) or not 1 <= v <= limit for v in values):
                raise HashsvcError(f"{name.replace('_', ' ')} must be whole {unit} "
                                   f"1-{limit}, got {list(values)}")
            object.__setattr__(self, name, tuple(sorted(set(values))))

    @property
    def index_variants(self) -> tuple[str, ...]:
        """Names of the extra hashes stored per known image added from a file."""
        trimmed = (TRIMMED,) if self.trim_borders else ()
        return (trimmed + tuple(crop_variant_name(p) for p in self.crop_variants)
                + tuple(rotation_variant_name(sign * d) for d in self.rotation_variants
                        for sign in (1, -1))
                + tuple(corner_variant_name(p, c) for p in self.corner_crops for c in CORNERS))

    def margin(self, way: str) -> int:
        """The bits a match through `way` must stay inside the bank's threshold."""
        return dict(self.margins).get(way, self.variant_margin)

    def margin_for(self, *, rotated: bool, trimmed: bool, variant: str) -> int:
        """The margin of a match through these ways: the largest of theirs (0 for plain)."""
        stored = variant_way(variant)
        ways = [way for way, used in ((DIHEDRAL, rotated), (TRIMMED_QUERY, trimmed)) if used]
        ways += [stored] if stored is not None else []
        return max((self.margin(way) for way in ways), default=0)

    def accepts_variant(self, variant: str) -> bool:
        """Whether a stored variant still counts (a bank may have turned a strategy off)."""
        return variant == "" or variant in self.index_variants

    def to_json(self) -> str:
        """Without per-way margins, rotations or corner crops, the JSON an older hashsvc
        wrote (and can read: a replica not yet upgraded loads a snapshot published by a newer
        admin node)."""
        value = {**asdict(self), "crop_variants": list(self.crop_variants),
                 "rotation_variants": list(self.rotation_variants),
                 "corner_crops": list(self.corner_crops), "margins": dict(self.margins)}
        for key in ("margins", "rotation_variants", "corner_crops"):
            if not value[key]:
                del value[key]
        return json.dumps(value, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> MatchStrategies:
        return cls.from_dict(json.loads(text) if text else {})

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> MatchStrategies:
        unknown = set(value) - {"dihedral", "trim_borders", "crop_variants", "variant_margin",
                                "margins", "rotation_variants", "corner_crops"}
        if unknown:
            raise HashsvcError(f"unknown matching strategy: {', '.join(sorted(unknown))}")
        return cls(dihedral=bool(value.get("dihedral", True)),
                   trim_borders=bool(value.get("trim_borders", False)),
                   crop_variants=tuple(value.get("crop_variants", ())),
                   rotation_variants=tuple(value.get("rotation_variants", ())),
                   corner_crops=tuple(value.get("corner_crops", ())),
                   variant_margin=int(value.get("variant_margin", 0)),
                   margins=tuple(dict(value.get("margins") or {}).items()))

    def describe(self) -> str:
        parts = ["dihedral" if self.dihedral else "no dihedral"]
        if self.trim_borders:
            parts.append("trim borders")
        if self.crop_variants:
            parts.append("crops " + ",".join(f"{p}%" for p in self.crop_variants))
        if self.rotation_variants:
            parts.append("rotations " + ",".join(f"±{d}°" for d in self.rotation_variants))
        if self.corner_crops:
            parts.append("corner crops " + ",".join(f"{p}%" for p in self.corner_crops))
        if self.variant_margin:
            parts.append(f"variant margin {self.variant_margin}")
        parts.extend(f"{way} margin {bits}" for way, bits in self.margins)
        return ", ".join(parts)


def _check_margin(what: str, bits: object) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 0 <= bits <= MAX_MARGIN:
        raise HashsvcError(f"{what} must be 0-{MAX_MARGIN} bits, got {bits!r}")


def parse_margins(values: list[str]) -> dict[str, int]:
    """`["dihedral=0", "crop=12"]` -> {"dihedral": 0, "crop": 12} (checked by MatchStrategies)."""
    margins: dict[str, int] = {}
    for value in values:
        way, sep, bits = value.partition("=")
        if not sep or not bits.strip().isdigit():
            raise HashsvcError(f"invalid margin {value!r}: expected WAY=BITS with WAY one of "
                               f"{', '.join(WAYS)}, e.g. crop=12")
        margins[way.strip()] = int(bits)
    return margins


def parse_crop_list(text: str, default: tuple[int, ...] = DEFAULT_CROP_GRID,
                    what: str = "crop variants", unit: str = "percentages") -> tuple[int, ...]:
    """`"2,4,6"` -> (2, 4, 6); `"default"` -> `default`; `""`/`"none"` -> ()."""
    text = text.strip().lower()
    if text in ("", "none", "off"):
        return ()
    if text == "default":
        return default
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise HashsvcError(
            f"{what}: expected comma-separated whole {unit}, got {text!r}"
        ) from None


PLAIN = MatchStrategies()  # a bank's strategies unless it chooses others: dihedral queries only
