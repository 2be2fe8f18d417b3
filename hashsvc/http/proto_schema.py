"""JSON Schema (2020-12, the dialect of OpenAPI 3.1) for proto messages, following protobuf's
canonical JSON mapping, which is what the HTTP API speaks (`json_format`).

Why generated from the descriptors: a schema written by hand would drift from the messages the
moment a field is added; this one is the messages, read field by field. The mapping, as
protobuf's JSON spec has it and `json_format.MessageToDict` writes it:
- a field is named by its `json_name` (lowerCamelCase); a field at its default value is left
  out, so no property is ever required (parsers also take the proto name; the schema shows the
  canonical one only);
- 64-bit integers are decimal strings (a JavaScript number cannot hold them), 32-bit ones
  numbers; `bytes` are base64 strings; enums are their value names; `float`/`double` are numbers,
  or the strings "NaN", "Infinity", "-Infinity";
- repeated fields are arrays, maps are objects keyed by the key's string form;
- at most one member of a `oneof` is present; a proto3 `optional` field is present whenever it
  was set, even to its default;
- the well-known types have their own JSON forms (`WELL_KNOWN`): a FieldMask is a string of
  comma-separated lowerCamelCase paths, a Struct any object, a Timestamp an RFC 3339 string.
Each message and enum is one component, referenced by `$ref`, so recursive messages are fine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

Schema = dict[str, Any]
COMPONENTS = "#/components/schemas/"

_FLOAT = {"anyOf": [{"type": "number"},
                    {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]}]}
_INT64 = {"type": "string", "pattern": "^-?[0-9]+$"}
_UINT64 = {"type": "string", "pattern": "^[0-9]+$"}
_T = FieldDescriptor
SCALARS: dict[int, Schema] = {
    _T.TYPE_DOUBLE: {**_FLOAT, "format": "double"},
    _T.TYPE_FLOAT: {**_FLOAT, "format": "float"},
    _T.TYPE_INT32: {"type": "integer", "format": "int32",
                    "minimum": -(2**31), "maximum": 2**31 - 1},
    _T.TYPE_SINT32: {"type": "integer", "format": "int32",
                     "minimum": -(2**31), "maximum": 2**31 - 1},
    _T.TYPE_SFIXED32: {"type": "integer", "format": "int32",
                       "minimum": -(2**31), "maximum": 2**31 - 1},
    _T.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1},
    _T.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1},
    _T.TYPE_INT64: {**_INT64, "format": "int64"},
    _T.TYPE_SINT64: {**_INT64, "format": "int64"},
    _T.TYPE_SFIXED64: {**_INT64, "format": "int64"},
    _T.TYPE_UINT64: {**_UINT64, "format": "uint64"},
    _T.TYPE_FIXED64: {**_UINT64, "format": "uint64"},
    _T.TYPE_BOOL: {"type": "boolean"},
    _T.TYPE_STRING: {"type": "string"},
    _T.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
# Map keys are always JSON strings: the key's value written out.
_MAP_KEYS: dict[int, Schema] = {
    **{kind: {"pattern": "^-?[0-9]+$"} for kind in (
        _T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32, _T.TYPE_INT64, _T.TYPE_SINT64,
        _T.TYPE_SFIXED64)},
    **{kind: {"pattern": "^[0-9]+$"} for kind in (
        _T.TYPE_UINT32, _T.TYPE_FIXED32, _T.TYPE_UINT64, _T.TYPE_FIXED64)},
    _T.TYPE_BOOL: {"enum": ["true", "false"]},
}
_WRAPPED = {"DoubleValue": _T.TYPE_DOUBLE, "FloatValue": _T.TYPE_FLOAT,
            "Int64Value": _T.TYPE_INT64, "UInt64Value": _T.TYPE_UINT64,
            "Int32Value": _T.TYPE_INT32, "UInt32Value": _T.TYPE_UINT32,
            "BoolValue": _T.TYPE_BOOL, "StringValue": _T.TYPE_STRING,
            "BytesValue": _T.TYPE_BYTES}
WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.FieldMask": {
        "type": "string", "pattern": "^([a-z][A-Za-z0-9]*(\\.[a-z][A-Za-z0-9]*)*(,|$))*$",
        "description": "Field paths, lowerCamelCase, comma-separated (e.g. \"thresholds,"
                       "enabled\"): google.protobuf.FieldMask in JSON."},
    "google.protobuf.Struct": {
        "type": "object", "description": "Any JSON object: google.protobuf.Struct in JSON."},
    "google.protobuf.Value": {"description": "Any JSON value: google.protobuf.Value in JSON."},
    "google.protobuf.ListValue": {
        "type": "array", "description": "Any JSON array: google.protobuf.ListValue in JSON."},
    "google.protobuf.NullValue": {"type": "null"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Timestamp": {
        "type": "string", "format": "date-time",
        "description": "RFC 3339, in UTC (\"Z\"), with 0, 3, 6 or 9 fractional digits."},
    "google.protobuf.Duration": {
        "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
        "description": "Seconds with up to 9 fractional digits and the suffix \"s\"."},
    "google.protobuf.Any": {
        "type": "object", "required": ["@type"],
        "properties": {"@type": {"type": "string"}},
        "description": "The packed message's JSON, with its type URL in \"@type\"."},
    **{f"google.protobuf.{name}": {**SCALARS[kind], "description": f"google.protobuf.{name}: "
                                   "the wrapped value itself"}
       for name, kind in _WRAPPED.items()},
}


def ref(name: str) -> Schema:
    return {"$ref": COMPONENTS + name}


class SchemaSet:
    """The components for every message and enum reached from the ones asked for.

    `comments` maps a full proto name (message, `Message.field`, enum, `Enum.VALUE`) to its
    comment in the .proto source, used as the description."""

    def __init__(self, comments: Mapping[str, str]) -> None:
        self.comments = comments
        self.schemas: dict[str, Schema] = {}

    def message(self, descriptor: Descriptor) -> Schema:
        """A `$ref` to the message's component, adding it (and what it reaches) if new."""
        name = descriptor.full_name
        if name not in self.schemas:
            if name in WELL_KNOWN:
                self.schemas[name] = WELL_KNOWN[name]
            else:
                self.schemas[name] = {}  # claimed first: a recursive field finds it
                self.schemas[name] = self._message_schema(descriptor)
        return ref(name)

    def field(self, field: FieldDescriptor) -> Schema:
        """The schema of one field's JSON value (array, map object or single value)."""
        if _is_map(field):
            entry = _message_type(field).fields_by_name
            key, value = entry["key"], entry["value"]
            return {"type": "object", "propertyNames": _MAP_KEYS.get(key.type, {}),
                    "additionalProperties": self._single(value)}
        if field.is_repeated:
            return {"type": "array", "items": self._single(field)}
        return self._single(field)

    def _single(self, field: FieldDescriptor) -> Schema:
        if field.type in (_T.TYPE_MESSAGE, _T.TYPE_GROUP):
            return self.message(_message_type(field))
        if field.type == _T.TYPE_ENUM:
            assert field.enum_type is not None
            return self._enum(field.enum_type)
        return dict(SCALARS[field.type])

    def _enum(self, descriptor: EnumDescriptor) -> Schema:
        name = descriptor.full_name
        if name in WELL_KNOWN:
            self.schemas.setdefault(name, WELL_KNOWN[name])
        elif name not in self.schemas:
            lines = [f"- `{value.name}`: {self.comments[f'{name}.{value.name}']}"
                     for value in descriptor.values
                     if self.comments.get(f"{name}.{value.name}")]
            text = "\n".join(filter(None, [self.comments.get(name, ""), "\n".join(lines)]))
            schema: Schema = {"type": "string", "enum": [v.name for v in descriptor.values]}
            if text:
                schema["description"] = text
            self.schemas[name] = schema
        return ref(name)

    def _message_schema(self, descriptor: Descriptor) -> Schema:
        properties: dict[str, Schema] = {}
        for field in descriptor.fields:
            schema = self.field(field)
            comment = self.comments.get(f"{descriptor.full_name}.{field.name}", "")
            if _is_optional(field):
                comment = " ".join(filter(None, [comment, "(Optional: present whenever it was "
                                                 "set, even to its default.)"]))
            if comment:
                schema = {**schema, "description": comment}
            properties[field.json_name] = schema
        result: Schema = {"type": "object"}
        if self.comments.get(descriptor.full_name):
            result["description"] = self.comments[descriptor.full_name]
        result["properties"] = properties
        result["additionalProperties"] = False  # the server refuses unknown fields
        exclusive = [_at_most_one([f.json_name for f in oneof.fields])
                     for oneof in descriptor.oneofs if not _is_synthetic(oneof.fields)]
        if exclusive:
            result["allOf"] = exclusive
        return result


def _at_most_one(names: list[str]) -> Schema:
    """At most one member of a oneof is present (none is fine): no two of them together."""
    pairs = [{"required": [a, b]} for i, a in enumerate(names) for b in names[i + 1:]]
    return {"not": {"anyOf": pairs}} if len(pairs) > 1 else {"not": pairs[0]} if pairs else {}


def _is_map(field: FieldDescriptor) -> bool:
    return (field.type == _T.TYPE_MESSAGE and field.is_repeated
            and _message_type(field).GetOptions().map_entry)


def _message_type(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None, field.full_name
    return field.message_type


def _is_optional(field: FieldDescriptor) -> bool:
    """A proto3 `optional` scalar: explicit presence, through a synthetic one-member oneof."""
    oneof = field.containing_oneof
    return oneof is not None and _is_synthetic(oneof.fields)


def _is_synthetic(fields: Any) -> bool:
    """The oneof protoc makes for a proto3 `optional` field (one member, named _<field>)."""
    members = list(fields)
    return (len(members) == 1 and members[0].containing_oneof.name == f"_{members[0].name}"
            and members[0].has_presence)
