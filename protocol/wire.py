"""The compact wire layout: a message's records as one self-describing frame.

Flower 1.41 moves every object of a message (the message, its record dict, each record, each
array, each chunk) as one HTTP request of its own, about 835 B of head each, so a message costs
what its number of objects says. Packed, a content of any records travels as ONE record
`wire`: a ConfigRecord whose one entry `frame` (bytes) holds every array and every scalar
entry of the config and metric records, written as follows (numbers are varints, names one
byte: an index into `NAMES` plus one, or 0 followed by a 1-byte length and the UTF-8 name):

    b"FW", version (1 byte), codec (name), number of records, then per record: kind (b"a"
    arrays, b"c" config, b"m" metrics), name, number of entries; per array: name, dtype code
    (1 byte), flags (1 byte: 1 = late), rank (1 byte), dimensions; per scalar entry: key,
    type (1 byte: int, float, false, true, str, bytes; a list: 16 + its items' type, then its
    length) and value (int: zigzag varint; float: 8 bytes little-endian; bool: in the type, or
    one byte in a list; str, bytes: length and bytes); then the arrays' bytes (little-endian,
    C order), back to back, in header order.

Arrays named in `LATE_ARRAYS` (a progressive refinement, which may arrive late or never) travel
in a second frame, record `wire.late`, sent after the first (`LATE_MAGIC`, the version, then
their bytes). A frame larger than one of Flower's array chunks (5 MiB) travels as a uint8 array
instead (an ArrayRecord of that name holding the array `frame`) so that Flower chunks it as it
does any large array. `pack` and `unpack` are exact inverses; `unpack` raises `FrameError`
naming what disagrees (magic, version, a truncated header, a dtype, the data's length).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from protocol import keys

WIRE = "wire"  # the one record of a packed content
FRAME = "frame"  # its bytes entry, or the one array of a large frame's ArrayRecord
LATE = "wire.late"  # the late arrays' frame, the same way
LATE_ARRAYS = frozenset({"refine"})  # array names that travel last, in a frame of their own
LAYOUTS = ("compact", "flower")  # the run-config's `wire.layout`

MAGIC = b"FW"
LATE_MAGIC = b"FL"
VERSION = 1
CHUNK_BYTES = 5 * 1024 * 1024  # Flower 1.41's array chunk size (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE)
DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")
DTYPES += ("float16", "float32", "float64")
KINDS = {b"a": ArrayRecord, b"c": ConfigRecord, b"m": MetricRecord}
MAX_RANK = 32
# Names written as one byte (their index + 1). Append only: a frame's version pins the table.
NAMES = (
    keys.ARRAYS,
    keys.CONFIG,
    keys.METRICS,
    keys.SERVER_ROUND,
    keys.PARTITION_ID,
    keys.NUM_PARTITIONS,
    keys.NUM_EXAMPLES,
    keys.TRAIN_LOSS,
    keys.EVAL_LOSS,
    keys.EVAL_ACCURACY,
    keys.CODEC,
    keys.STC_P_UP,
    keys.STC_APPROX,
    keys.STC_ACCUMULATE_UP,
    keys.SEED,
    keys.DOWN_ROUNDS,
    keys.DOWN,
    keys.MODEL,
    keys.QUANT_SCHEME,
    keys.QUANT_BITS,
    keys.QUANT_BASE_BITS,
    keys.QUANT_REFINE_BITS,
    keys.QUANT_EXPONENT_BITS,
    keys.QUANT_MANTISSA_BITS,
    keys.QUANT_STOCHASTIC,
    keys.QUANT_ERROR_FEEDBACK,
    keys.QUANT_DOWN_BITS,
    keys.DOWN_QUANT,
    keys.DOWN_NAMES,
    keys.DOWN_SHAPES,
    keys.TOPK_P_UP,
    keys.TOPK_ERROR_FEEDBACK,
    keys.QSFL_RELEVANCE,
    keys.QSFL_SIGNS,
    keys.QSFL_SEGMENT,
    keys.QSFL_NUM_SEGMENTS,
    keys.QSFL_TOP_P,
    keys.QSFL_QUANTIZE,
    keys.RELEVANCE,
    keys.CLIENT_DOWN_BYTES,
    keys.CLIENT_UP_BYTES,
    "none",
    "stc",
    "topk",
    "quant",
    "qsfl",
    "bits",
    "header",
    "codes",
    "lows",
    "steps",
    "base",
    "refine",
    "signs",
    "offsets",
    "values",
)
_INDEX = {name: index + 1 for index, name in enumerate(NAMES)}
assert len(_INDEX) == len(NAMES) < 256, "NAMES must be distinct and fit a byte"
INT, FLOAT, FALSE, TRUE, STR, BYTES, BOOL_ITEM = range(7)  # value types; a list: _LIST + type
_LIST = 16
_DOUBLE = struct.Struct("<d")


class FrameError(ValueError):
    """A packed content that does not unpack: its header disagrees with its data or entries."""


@dataclass(frozen=True)
class Unpacked:
    """A packed content opened: its records in Flower's layout and the codec its frame names."""

    content: RecordDict
    codec: str


def is_packed(content: RecordDict) -> bool:
    """Whether `content` travels in the compact layout (it holds the record `wire`)."""
    return WIRE in content


def pack(content: RecordDict, codec: str = "none") -> RecordDict:
    """`content` in the compact layout: one frame with every array and scalar.

    Raises ValueError for a name longer than 255 bytes or a value a frame cannot carry.
    """
    out = bytearray(MAGIC + bytes([VERSION]))
    _name(out, codec)
    _varint(out, len(content))
    data: list[np.ndarray] = []
    late: list[np.ndarray] = []
    for name, record in content.items():
        kind = next(code for code, cls in KINDS.items() if isinstance(record, cls))
        out += kind
        _name(out, name)
        _varint(out, len(record))
        if kind != b"a":
            for key, value in record.items():
                _name(out, key)
                _value(out, value)
            continue
        for array_name, array in record.items():
            value = array.numpy()
            is_late = array_name in LATE_ARRAYS
            _array_header(out, array_name, value, is_late)
            (late if is_late else data).append(
                np.ascontiguousarray(value, value.dtype.newbyteorder("<"))
            )
    packed = RecordDict({WIRE: _frame_record(bytes(out), data)})
    if late:
        packed[LATE] = _frame_record(LATE_MAGIC + bytes([VERSION]), late)
    return packed


def unpack(content: RecordDict) -> Unpacked:
    """The records a packed `content` carries, in Flower's layout; FrameError when malformed."""
    extra = set(content) - {WIRE, LATE}
    if extra:
        raise FrameError(f"records beside the frame: {', '.join(sorted(extra))}")
    reader = _Reader(_frame_bytes(content, WIRE, "frame"))
    codec, layout = _read_header(reader)
    late_bytes = _late_bytes(content, layout)
    return Unpacked(_rebuild(layout, reader.rest(), late_bytes), codec)


def scalars(content: RecordDict) -> dict:
    """A request's config entries, read without copying its arrays (packed or not)."""
    if not is_packed(content):
        config = content.config_records.get(keys.CONFIG)
        return dict(config) if config is not None else {}
    _, layout = _read_header(_Reader(_frame_bytes(content, WIRE, "frame")))
    return next((dict(f.entries) for f in layout if f.kind == b"c" and f.name == keys.CONFIG), {})


def late_record(content: RecordDict):
    """The record that carries a packed content's late arrays, or None."""
    return content.get(LATE) if is_packed(content) else None


# ---------------------------------------------------------------- writing
def _varint(out: bytearray, number: int) -> None:
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return


def _name(out: bytearray, name: str) -> None:
    index = _INDEX.get(name)
    if index is not None:
        out.append(index)
        return
    raw = name.encode()
    if len(raw) > 255:
        raise ValueError(f"the name '{name[:40]}...' has {len(raw)} bytes; a frame takes 255")
    out += bytes([0, len(raw)]) + raw


def _value(out: bytearray, value: object) -> None:
    if isinstance(value, list):
        codes = {_type_code(item) for item in value}
        if codes <= {FALSE, TRUE} and codes:
            codes = {BOOL_ITEM}  # in a list, a bool is one byte of its own
        if len(codes) > 1:
            raise ValueError(f"a list mixing types cannot travel in a frame: {value[:5]!r}")
        code = codes.pop() if codes else INT
        out.append(_LIST + code)
        _varint(out, len(value))
        for item in value:
            _item(out, code, item)
        return
    code = _type_code(value)
    out.append(code)
    _item(out, code, value)


def _type_code(value: object) -> int:
    if isinstance(value, bool):
        return TRUE if value else FALSE
    for kind, code in ((int, INT), (float, FLOAT), (str, STR), (bytes, BYTES)):
        if isinstance(value, kind):
            return code
    raise ValueError(f"a value of type {type(value).__name__} cannot travel in a frame")


def _item(out: bytearray, code: int, value) -> None:
    if code == INT:
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"the int {value} does not fit 64 bits")
        _varint(out, (value << 1) ^ (value >> 63))  # zigzag: small magnitudes, few bytes
    elif code == FLOAT:
        out += _DOUBLE.pack(value)
    elif code == BOOL_ITEM:
        out.append(int(value))
    elif code in (STR, BYTES):
        raw = value.encode() if code == STR else value
        _varint(out, len(raw))
        out += raw


def _array_header(out: bytearray, name: str, value: np.ndarray, late: bool) -> None:
    dtype = value.dtype.newbyteorder("=").name
    if dtype not in DTYPES:
        raise ValueError(f"array '{name}' is {dtype}; a frame carries {', '.join(DTYPES)}")
    _name(out, name)
    out += bytes([DTYPES.index(dtype), int(late), value.ndim])
    for dim in value.shape:
        _varint(out, dim)


def _frame_record(header: bytes, arrays: list[np.ndarray]) -> ConfigRecord | ArrayRecord:
    """The frame (header, then the arrays' bytes) in one buffer, each array copied once."""
    frame = np.empty(len(header) + sum(value.nbytes for value in arrays), np.uint8)
    frame[: len(header)] = np.frombuffer(header, np.uint8)
    at = len(header)
    for value in arrays:
        frame[at : at + value.nbytes] = value.reshape(-1).view(np.uint8)
        at += value.nbytes
    if frame.size <= CHUNK_BYTES:
        return ConfigRecord({FRAME: frame.tobytes()})
    return ArrayRecord({FRAME: Array(frame)})


# ---------------------------------------------------------------- reading
@dataclass(frozen=True)
class _Field:
    """One record of the frame's layout and what it holds."""

    kind: bytes
    name: str
    arrays: tuple[tuple[str, np.dtype, bool, tuple[int, ...]], ...] = ()
    entries: tuple[tuple[str, object], ...] = ()


class _Reader:
    """A cursor over a frame; every read past its end is a FrameError."""

    def __init__(self, data: bytes | np.ndarray) -> None:
        self.data, self.at = memoryview(data).cast("B"), 0

    def take(self, count: int) -> bytes:
        if self.at + count > len(self.data):
            raise FrameError("the frame's header is truncated")
        self.at += count
        return bytes(self.data[self.at - count : self.at])

    def byte(self) -> int:
        return self.take(1)[0]

    def varint(self) -> int:
        number = shift = 0
        while True:
            value = self.byte()
            number |= (value & 0x7F) << shift
            if value < 0x80:
                return number
            shift += 7
            if shift > 63:
                raise FrameError("a number in the frame's header is longer than 64 bits")

    def count(self, what: str) -> int:
        """A count no larger than the bytes left (each counted thing takes at least one)."""
        number = self.varint()
        if number > len(self.data) - self.at:
            raise FrameError(f"the frame says {number} {what}; its header is shorter")
        return number

    def name(self) -> str:
        index = self.byte()
        if index:
            if index > len(NAMES):
                raise FrameError(f"name index {index}; this build knows 1..{len(NAMES)}")
            return NAMES[index - 1]
        return self.text(self.byte())

    def text(self, length: int) -> str:
        try:
            return self.take(length).decode()
        except UnicodeDecodeError:
            raise FrameError("a name or string in the frame is not UTF-8") from None

    def value(self) -> object:
        code = self.byte()
        if code >= _LIST:
            return [self.item(code - _LIST) for _ in range(self.count("list items"))]
        return self.item(code)

    def item(self, code: int) -> object:
        if code == INT:
            raw = self.varint()
            return -((raw + 1) >> 1) if raw & 1 else raw >> 1
        if code == FLOAT:
            return _DOUBLE.unpack(self.take(8))[0]
        if code in (FALSE, TRUE):
            return code == TRUE
        if code == BOOL_ITEM:
            return bool(self.byte())
        if code == STR:
            return self.text(self.count("string bytes"))
        if code == BYTES:
            return self.take(self.count("bytes"))
        raise FrameError(f"value type {code}; known types 0..6 and lists of them")

    def rest(self) -> memoryview:
        return self.data[self.at :]


def _frame_bytes(content: RecordDict, key: str, what: str) -> bytes | np.ndarray:
    """A frame from its record: a ConfigRecord's bytes entry, or a uint8 array."""
    record = content.get(key)
    if isinstance(record, ConfigRecord) and list(record) == [FRAME]:
        frame = record[FRAME]
        if isinstance(frame, bytes):
            return frame
    if isinstance(record, ArrayRecord) and list(record) == [FRAME]:
        array = record[FRAME].numpy()
        if array.dtype == np.uint8 and array.ndim == 1:
            return array
    raise FrameError(f"the record '{key}' does not hold the {what} (one bytes entry or array)")


def _read_header(reader: _Reader) -> tuple[str, list[_Field]]:
    if reader.take(2) != MAGIC:
        raise FrameError("not a frame (bad magic bytes)")
    version = reader.byte()
    if version != VERSION:
        raise FrameError(f"frame version {version}; this build reads version {VERSION}")
    codec = reader.name()
    layout = []
    for _ in range(reader.count("records")):
        kind = reader.take(1)
        if kind not in KINDS:
            raise FrameError(f"unknown record kind {kind!r}")
        name, count = reader.name(), reader.count("entries")
        if kind == b"a":
            layout.append(_Field(kind, name, arrays=tuple(_array(reader) for _ in range(count))))
        else:
            entries = tuple((reader.name(), reader.value()) for _ in range(count))
            layout.append(_Field(kind, name, entries=entries))
    return codec, layout


def _array(reader: _Reader) -> tuple[str, np.dtype, bool, tuple[int, ...]]:
    name = reader.name()
    code, flags, rank = reader.byte(), reader.byte(), reader.byte()
    if code >= len(DTYPES):
        raise FrameError(f"array '{name}' has dtype code {code}; known codes: 0..{len(DTYPES) - 1}")
    if flags > 1 or rank > MAX_RANK:
        raise FrameError(f"array '{name}' has flags {flags} and rank {rank}")
    dims = tuple(reader.varint() for _ in range(rank))
    return name, np.dtype(DTYPES[code]).newbyteorder("<"), bool(flags), dims


def _late_bytes(content: RecordDict, layout: list[_Field]) -> memoryview:
    if not any(late for field in layout for _, _, late, _ in field.arrays):
        if LATE in content:
            raise FrameError("a late frame without late arrays")
        return memoryview(b"")
    frame = _frame_bytes(content, LATE, "late frame")
    if bytes(frame[:3]) != LATE_MAGIC + bytes([VERSION]):
        raise FrameError("the late frame does not start with its magic bytes and version")
    return memoryview(frame)[3:]


def _rebuild(layout: list[_Field], data: memoryview, late: memoryview) -> RecordDict:
    """The records the layout describes, their arrays filled from the data and late data."""
    sizes = {False: 0, True: 0}
    for field in layout:
        for _, dtype, is_late, dims in field.arrays:
            sizes[is_late] += math.prod(dims) * dtype.itemsize
    if sizes[False] != len(data) or sizes[True] != len(late):
        raise FrameError(
            f"the frame's arrays take {sizes[False]} + {sizes[True]} late bytes; "
            f"it carries {len(data)} + {len(late)}"
        )
    offsets = {False: 0, True: 0}
    content = RecordDict()
    for field in layout:
        if field.name in content:
            raise FrameError(f"the record '{field.name}' appears twice")
        if field.kind != b"a":
            try:
                content[field.name] = KINDS[field.kind](dict(field.entries))
            except (TypeError, ValueError) as error:
                raise FrameError(f"record '{field.name}': {error}") from None
            continue
        record = ArrayRecord()
        for name, dtype, is_late, dims in field.arrays:
            size = math.prod(dims)
            source, start = (late if is_late else data), offsets[is_late]
            offsets[is_late] += size * dtype.itemsize
            value = np.frombuffer(source, dtype, size, start).reshape(dims)
            record[name] = Array(
                value if value.dtype.isnative else value.astype(value.dtype.newbyteorder("="))
            )
        content[field.name] = record
    return content
