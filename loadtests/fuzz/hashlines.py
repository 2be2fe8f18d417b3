"""A seeded generator of hostile hash-list files, for `indexer import` and ScanHashes.

Each generated file holds a few good lines and one hostile line (or is hostile as a whole:
CRLF, byte-order marks, duplicates). Whatever the file, the importer must either store all of it
or nothing, and name the file and line of what it refused; every entry it stores must then be
matchable (issue 12, defects 1 and 7: metadata that cannot become a protobuf `Struct` was stored,
and then broke every scan that matched it).

List `i` of seed `s` depends on (s, i) alone; `hostile_hashes` are hash strings for ScanHashes
itself, which must refuse each one as INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

BANK = "fuzz"
_HEX = "0123456789abcdef"
_LENGTHS = {"pdq": 64, "md5": 32, "sha256": 64}


@dataclass(frozen=True)
class HashList:
    name: str
    filename: str  # its extension tells `indexer import` the format
    content: bytes
    hashes: tuple[tuple[str, str], ...]  # (algorithm, hex) of every line with a well-formed hash
    algorithm: str | None = None  # `--algorithm`, for plain-text lists
    defect: str = ""


def _hex(rng: random.Random, algorithm: str) -> str:
    return "".join(rng.choice(_HEX) for _ in range(_LENGTHS[algorithm]))


def _deep(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


# Hostile JSON-lines members: (name, the raw JSON text of one line's "metadata" or
# "external_id" member, the defect of issue 12 it reproduces). Built lazily: some are megabytes.
_MEMBERS: tuple[tuple[str, Callable[[], str], str], ...] = (
    ("int-401-digits", lambda: '"metadata": {"n": ' + "9" * 401 + "}", "1"),
    ("int-4301-digits", lambda: '"metadata": {"n": ' + "9" * 4301 + "}", "7"),
    ("negative-int-500-digits", lambda: '"metadata": {"n": -' + "7" * 500 + "}", "1"),
    ("float-1e400", lambda: '"metadata": {"x": 1e400}', ""),
    ("nan", lambda: '"metadata": {"x": NaN, "y": -Infinity}', ""),
    ("nested-900", lambda: '"metadata": ' + _deep(900), "1"),
    ("nested-1000", lambda: '"metadata": ' + _deep(1000), "7"),
    ("nested-5000", lambda: '"metadata": ' + _deep(5000), "7"),
    ("array-nested-3000", lambda: '"metadata": {"a": ' + "[" * 3000 + "]" * 3000 + "}", "7"),
    ("surrogate-in-metadata", lambda: '"metadata": {"s": "\\udfff"}', "1"),
    ("surrogate-metadata-key", lambda: '"metadata": {"\\ud800": 1}', "1"),
    ("surrogate-external-id", lambda: '"external_id": "x\\udfffy"', "7"),
    ("nul-in-external-id", lambda: '"external_id": "a\\u0000b"', ""),
    ("metadata-array", lambda: '"metadata": [1, 2, 3]', ""),
    ("metadata-string", lambda: '"metadata": "text"', ""),
    ("metadata-1mb", lambda: '"metadata": {"s": "' + "m" * (1 << 20) + '"}', "13"),
    ("metadata-20k-keys", lambda: '"metadata": {'
     + ",".join(f'"k{i}": {i}' for i in range(20_000)) + "}", "13"),
    ("external-id-513", lambda: '"external_id": "' + "e" * 513 + '"', ""),
    ("external-id-1mb", lambda: '"external_id": "' + "e" * (1 << 20) + '"', "13"),
    ("external-id-number", lambda: '"external_id": 12345678901234567890123', ""),
    ("unknown-column", lambda: '"colour": {"deep": [1, {"x": null}]}', ""),
)
# The issue's own lines (defects 1 and 7): every run starts with them.
RECIPE_MEMBERS = ("int-401-digits", "nested-900", "surrogate-in-metadata", "nested-1000",
                  "int-4301-digits", "surrogate-external-id")


def _bad_hash(rng: random.Random, algorithm: str) -> tuple[str, str]:
    good = _hex(rng, algorithm)
    choices = [
        ("non-hex", good[:-1] + rng.choice("gxz!é")),
        ("short", good[:rng.randrange(0, len(good))]),
        ("long", good + rng.choice(_HEX) * rng.randrange(1, 64)),
        ("0x-prefix", "0x" + good[2:]),
        ("inner-space", good[:10] + " " + good[11:]),
        ("upper-and-lower", good.upper()[:32] + good[32:]),  # valid: hex is case-blind
        ("fullwidth-digits", "０" * len(good)),
        ("nul", good[:5] + "\0" + good[6:]),
        ("huge", "a" * (1 << 20)),
    ]
    return rng.choice(choices)


def _jsonl(rng: random.Random, index: int, seed: int, member: str | None = None) -> HashList:
    algorithm = rng.choice(("pdq", "md5", "sha256"))
    good = [_hex(rng, algorithm) for _ in range(rng.randrange(1, 6))]
    lines = [json.dumps({"hash": h, "algorithm": algorithm, "external_id": f"g{seed}-{index}-{i}"})
             for i, h in enumerate(good)]
    hashes = [(algorithm, h) for h in good]
    if member is not None or rng.random() < 0.6:
        member_name, make, defect = next(m for m in _MEMBERS if m[0] == member) if member \
            else rng.choice(_MEMBERS)
        hostile = _hex(rng, algorithm)
        line = '{"hash": "' + hostile + '", "algorithm": "' + algorithm + '", ' + make() + "}"
        hashes.append((algorithm, hostile))
    else:
        hash_name, value = _bad_hash(rng, algorithm)
        member_name, defect = f"hash-{hash_name}", ""
        line = json.dumps({"hash": value, "algorithm": algorithm})
        if hash_name == "upper-and-lower":
            hashes.append((algorithm, value.lower()))
    lines.insert(rng.randrange(len(lines) + 1), line)
    name = (f"recipe:d{defect}-{member_name}" if member
            else f"list-{seed}-{index}:jsonl:{member_name}")
    return HashList(name, f"list{index}.jsonl",
                    ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"),
                    tuple(hashes), defect=defect)


def _delimited(rng: random.Random, index: int, seed: int) -> HashList:
    delimiter, ext = rng.choice(((",", "csv"), ("\t", "tsv")))
    algorithm = rng.choice(("pdq", "md5"))
    good = [_hex(rng, algorithm) for _ in range(rng.randrange(1, 6))]
    rows = [delimiter.join((h, algorithm, f"g{seed}-{index}-{i}")) for i, h in enumerate(good)]
    header = delimiter.join(("hash", "algorithm", "external_id"))
    hashes = [(algorithm, h) for h in good]
    kind = rng.choice(("bad-hash", "unbalanced-quote", "extra-column", "missing-column",
                       "crlf", "bom", "bom-mid-file", "duplicates", "invalid-utf8", "nul-byte",
                       "long-line", "blank-lines", "no-header"))
    raw_header = header.encode()
    if kind == "bad-hash":
        hash_name, value = _bad_hash(rng, algorithm)
        kind = f"hash-{hash_name}"
        rows.append(delimiter.join((value.replace(delimiter, " "), algorithm, "bad")))
    elif kind == "unbalanced-quote":
        rows.append(delimiter.join(('"' + _hex(rng, algorithm), algorithm, "q")))
    elif kind == "extra-column":
        rows.append(delimiter.join((_hex(rng, algorithm), algorithm, "x", "extra")))
    elif kind == "missing-column":
        rows.append(_hex(rng, algorithm))
    elif kind == "duplicates":
        rows.extend(rows * 3)
    elif kind == "bom":
        raw_header = b"\xef\xbb\xbf" + raw_header
    elif kind == "long-line":
        rows.append(delimiter.join((_hex(rng, algorithm), algorithm, "L" * (2 << 20))))
    elif kind == "blank-lines":
        rows = [r for row in rows for r in (row, "", delimiter * 2)]
    body = [raw_header, *(r.encode() for r in rows)]
    if kind == "bom-mid-file":
        body.insert(2, b"\xef\xbb\xbf" + delimiter.join((_hex(rng, algorithm), algorithm,
                                                          "bom")).encode())
    elif kind == "invalid-utf8":
        body.insert(2, _hex(rng, algorithm).encode() + delimiter.encode() + b"pdq\xff\xfe")
    elif kind == "nul-byte":
        body.insert(2, _hex(rng, algorithm).encode() + b"\0" + delimiter.encode() + b"pdq")
    elif kind == "no-header":
        body = body[1:]
    end = b"\r\n" if kind == "crlf" else b"\n"
    return HashList(f"list-{seed}-{index}:{ext}:{kind}", f"list-{index}.{ext}",
                    end.join(body) + end, tuple(hashes))


def _text(rng: random.Random, index: int, seed: int) -> HashList:
    algorithm = rng.choice(("pdq", "md5"))
    good = [_hex(rng, algorithm) for _ in range(rng.randrange(1, 6))]
    hash_name, value = _bad_hash(rng, algorithm)
    lines = [*good, "# a comment", value]
    rng.shuffle(lines)
    hashes = [(algorithm, h) for h in good]
    if hash_name == "upper-and-lower":
        hashes.append((algorithm, value.lower()))
    return HashList(f"list-{seed}-{index}:txt:hash-{hash_name}", f"list-{index}.txt",
                    ("\n".join(lines) + "\n").encode(), tuple(hashes), algorithm=algorithm)


def generate_one(seed: int, index: int) -> HashList:
    rng = random.Random(seed * 2_000_003 + index)
    make = rng.choices((_jsonl, _delimited, _text), (6, 3, 1))[0]
    return make(rng, index, seed)


def recipes() -> list[HashList]:
    return [_jsonl(random.Random(i), -1 - i, 0, member) for i, member in enumerate(RECIPE_MEMBERS)]


def generate(seed: int, count: int, *, with_recipes: bool = True) -> Iterator[HashList]:
    """The recipes (if asked), then `count` generated lists."""
    if with_recipes:
        yield from recipes()
    for index in range(count):
        yield generate_one(seed, index)


def hostile_hashes(seed: int, count: int) -> Iterator[tuple[str, str, str]]:
    """(name, algorithm, hash string) that ScanHashes must refuse, one at a time."""
    rng = random.Random(seed * 3_000_017)
    for index in range(count):
        algorithm = rng.choice(("pdq", "md5", "sha256"))
        name, value = _bad_hash(rng, algorithm)
        if name != "upper-and-lower":
            yield f"hash-{seed}-{index}:{algorithm}:{name}", algorithm, value
