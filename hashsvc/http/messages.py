"""Query parameters, form fields and path parameters → the JSON of a request message.

Why a JSON dict rather than setting fields directly: `json_format.ParseDict` then does every
conversion (enum names, 64-bit integers given as strings, nested messages) and every check
exactly as for a JSON body, so a parameter and a body field cannot be read differently. What
ParseDict cannot know is the text form of a URL: every value is a string, repeated fields are
repeated parameters, and nested fields are named with dots; that is done here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from hashsvc.http.bodies import Refused

_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}


def field_named(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    """A field by its JSON name (`pageSize`) or its proto name (`page_size`)."""
    return descriptor.fields_by_camelcase_name.get(name) or descriptor.fields_by_name.get(name)


def params_to_json(descriptor: Descriptor, params: Iterable[tuple[str, str]],
                   what: str = "query parameter") -> dict[str, Any]:
    """`a.b=1&c=x&c=y` → {"a": {"b": "1"}, "c": ["x", "y"]}, checked against the message."""
    document: dict[str, Any] = {}
    for name, value in params:
        target: dict[str, Any] = document
        current: Descriptor | None = descriptor
        parts = name.split(".")
        for depth, part in enumerate(parts):
            field = field_named(current, part) if current is not None else None  # a scalar's ".x"
            if field is None:
                raise Refused(400, f"unknown {what} {name!r}", "bad_request")
            last = depth == len(parts) - 1
            if field.type == FieldDescriptor.TYPE_MESSAGE and not _is_map(field):
                if last or field.is_repeated:
                    raise Refused(400, f"{what} {name!r} is a message: give its fields as "
                                  f"{name}.<field>, or use a JSON body route", "bad_request")
                target = target.setdefault(field.name, {})
                current = field.message_type
                continue
            if not last or _is_map(field):
                raise Refused(400, f"{what} {name!r} cannot be given as a parameter",
                              "bad_request")
            scalar = _scalar(field, value, name, what)
            if field.is_repeated:
                target.setdefault(field.name, []).append(scalar)
            elif field.name in target:
                raise Refused(400, f"{what} {name!r} is given more than once", "bad_request")
            else:
                target[field.name] = scalar
    return document


def _scalar(field: FieldDescriptor, value: str, name: str, what: str) -> Any:
    if field.type == FieldDescriptor.TYPE_BOOL:
        if value.lower() not in _BOOLEANS:
            raise Refused(400, f"{what} {name!r} must be true or false, not {value!r}",
                          "bad_request")
        return _BOOLEANS[value.lower()]
    return value  # numbers, enums and bytes (base64) as strings, as ParseDict accepts them


def _is_map(field: FieldDescriptor) -> bool:
    return (field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None
            and field.message_type.GetOptions().map_entry)


def mask_from_fields(descriptor: Descriptor, given: dict[str, Any]) -> str:
    """The FieldMask (JSON form, comma-separated camelCase paths) naming the fields of a
    message given in its JSON `given`: a PATCH without an updateMask changes what it names."""
    paths = []
    for name in given:
        field = field_named(descriptor, name)
        if field is None:
            raise Refused(400, f"unknown field {name!r} in the body", "bad_request")
        paths.append(field.json_name)
    return ",".join(paths)
