"""hypothesis strategies for any edgeloop protobuf message, built from its descriptor.

Every field gets values from its full wire range with the edges weighted in (uint64 2^63 and
2^64-1, NaN/inf doubles, NUL and control characters, unknown enum numbers), so a property test
over `messages(pb.X)` covers fields added later without being edited. `wire_bytes` adds what a
hostile or broken peer sends: truncated and bit-flipped encodings and plain garbage.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

U64_EDGES = [0, 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**63 + 1, 2**64 - 1]
I64_EDGES = [0, -1, 1, -(2**63), 2**63 - 1, -(2**31), 2**53 + 1]

_T = FieldDescriptor
u64 = st.one_of(st.sampled_from(U64_EDGES), st.integers(0, 2**64 - 1))
i64 = st.one_of(st.sampled_from(I64_EDGES), st.integers(-(2**63), 2**63 - 1))
texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "a\nb", "line\r\nERROR forged", "\u2028", "x" * 300]),
)

_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    _T.TYPE_UINT64: u64,
    _T.TYPE_FIXED64: u64,
    _T.TYPE_INT64: i64,
    _T.TYPE_SINT64: i64,
    _T.TYPE_SFIXED64: i64,
    _T.TYPE_UINT32: st.integers(0, 2**32 - 1),
    _T.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    _T.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    _T.TYPE_SINT32: st.integers(-(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: st.integers(-(2**31), 2**31 - 1),
    _T.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    _T.TYPE_FLOAT: st.floats(width=32, allow_nan=True, allow_infinity=True),
    _T.TYPE_BOOL: st.booleans(),
    _T.TYPE_STRING: texts,
    _T.TYPE_BYTES: st.binary(max_size=64),
    _T.TYPE_ENUM: st.integers(-3, 8),
}


def _repeated(f: Any) -> bool:
    is_repeated = getattr(f, "is_repeated", None)
    return bool(is_repeated) if is_repeated is not None else f.label == _T.LABEL_REPEATED


def _value(f: Any, depth: int) -> st.SearchStrategy[Any] | None:
    if f.type in (_T.TYPE_MESSAGE, _T.TYPE_GROUP):
        if depth <= 0:
            return None
        return _message(f.message_type._concrete_class, depth - 1)
    return _SCALARS[f.type]


def _field(f: Any, depth: int) -> st.SearchStrategy[Any] | None:
    if f.type == _T.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
        key = _value(f.message_type.fields_by_name["key"], depth)
        val = _value(f.message_type.fields_by_name["value"], depth)
        return None if key is None or val is None else st.dictionaries(key, val, max_size=4)
    value = _value(f, depth)
    if value is None:
        return None
    return st.lists(value, max_size=4) if _repeated(f) else value


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        f: Any = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if f.type == _T.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif _repeated(f):
            if f.type == _T.TYPE_MESSAGE:
                for v in value:
                    target.add().CopyFrom(v)
            else:
                target.extend(value)
        elif f.type == _T.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


def _message(cls: type[Message], depth: int) -> st.SearchStrategy[Message]:
    fields = {f.name: s for f in cls.DESCRIPTOR.fields if (s := _field(f, depth)) is not None}
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: _build(cls, values))


def messages(cls: type[Message], depth: int = 3) -> st.SearchStrategy[Any]:
    """Any instance of `cls`, every field drawn from its full wire range (edges weighted in)."""
    return _message(cls, depth)


def wire_bytes(cls: type[Message], depth: int = 3) -> st.SearchStrategy[bytes]:
    """Encodings of `cls` as a broken or hostile peer sends them: whole, truncated, bit-flipped,
    or garbage."""
    whole = messages(cls, depth).map(lambda m: m.SerializeToString())

    def truncate(data_cut: tuple[bytes, int]) -> bytes:
        data, cut = data_cut
        return data[: cut % (len(data) + 1)]

    def flip(data_pos: tuple[bytes, int, int]) -> bytes:
        data, pos, bit = data_pos
        if not data:
            return data
        i = pos % len(data)
        return data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1 :]

    return st.one_of(
        whole,
        st.tuples(whole, st.integers(0, 10_000)).map(truncate),
        st.tuples(whole, st.integers(0, 10_000), st.integers(0, 7)).map(flip),
        st.binary(max_size=128),
    )
