"""The compact wire layout: a message's records as one self-describing frame and its scalars.

Flower 1.41 moves every object of a message (the message, its record dict, each record, each
array, each chunk) as one HTTP request of its own, about 835 B of head each, so a message costs
what its number of objects says. Packed, a content of any records travels as ONE ConfigRecord
`wire`: its entry `frame` (bytes) holds every array, and its other entries are the scalar
entries of the config and metric records, in order. The frame says how to rebuild the records:

    b"FW", version (1 byte), codec (1-byte length + ASCII), number of records (varint), then
    per record: kind (b"a" arrays, b"c" config, b"m" metrics), name (1-byte length + UTF-8),
    number of entries (varint); per array: name (1-byte length + UTF-8), dtype code (1 byte),
    flags (1 byte: 1 = late), rank (1 byte), dimensions (varints); then the arrays' bytes
    (little-endian, C order), back to back, in the order the header lists them.

Arrays named in `LATE_ARRAYS` (a progressive refinement, which may arrive late or never) travel
in a second frame, record `wire.late`, sent after the first (`LATE_MAGIC` then their bytes). A
frame larger than one of Flower's array chunks (5 MiB) travels as a uint8 array instead
(ArrayRecord `wire.frame` or `wire.late`, array `frame`) so that Flower chunks it as it does
any large array. `pack` and `unpack` are exact inverses; `unpack` raises `FrameError` naming
what disagrees (magic, version, a truncated header, a dtype, the data's length, the entries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from protocol import keys

WIRE = "wire"  # the ConfigRecord of a packed content: the frame and the scalars
FRAME = "frame"  # its bytes entry (or the one array of a large frame's ArrayRecord)
LARGE_FRAME = "wire.frame"  # ArrayRecord of a frame larger than one chunk
LATE = "wire.late"  # the late arrays' frame (ConfigRecord, or ArrayRecord when large)
LATE_ARRAYS = frozenset({"refine"})  # array names that travel last, in a frame of their own
LAYOUTS = ("compact", "flower")  # the run-config's `wire.layout`

MAGIC = b"FW"
LATE_MAGIC = b"FL"
VERSION = 1
CHUNK_BYTES = 5 * 1024 * 1024  # Flower 1.41's array chunk size (FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE)
DTYPES = (
    "bool",
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float16",
    "float32",
    "float64",
)
KINDS = {b"a": ArrayRecord, b"c": ConfigRecord, b"m": MetricRecord}
MAX_RANK = 32


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
    """`content` in the compact layout: one frame with every array, the scalars beside it.

    Raises ValueError when two records share a scalar key or a name does not fit a byte.
    """
    header = [
        MAGIC,
        bytes([VERSION]),
        _short(codec.encode("ascii"), "codec"),
        _varint(len(content)),
    ]
    scalars: dict = {}
    data: list[np.ndarray] = []
    late: list[np.ndarray] = []
    for name, record in content.items():
        kind = next(code for code, cls in KINDS.items() if isinstance(record, cls))
        header += [kind, _short(name.encode(), "record name"), _varint(len(record))]
        if kind == b"a":
            for array_name, array in record.items():
                value = array.numpy()
                is_late = array_name in LATE_ARRAYS
                header.append(_array_header(array_name, value, is_late))
                (late if is_late else data).append(_little_endian(value))
            continue
        for key, value in record.items():
            if key in scalars or key == FRAME:
                raise ValueError(f"the scalar key '{key}' appears twice in one packed message")
            scalars[key] = value
    frame = b"".join([*header, *(value.tobytes() for value in data)])
    packed = RecordDict()
    if len(frame) <= CHUNK_BYTES:
        packed[WIRE] = ConfigRecord({FRAME: frame} | scalars)
    else:
        packed[WIRE] = ConfigRecord(scalars)
        packed[LARGE_FRAME] = _as_array_record(frame)
    if late:
        late_frame = b"".join([LATE_MAGIC, bytes([VERSION]), *(v.tobytes() for v in late)])
        small = len(late_frame) <= CHUNK_BYTES
        packed[LATE] = ConfigRecord({FRAME: late_frame}) if small else _as_array_record(late_frame)
    return packed


def unpack(content: RecordDict) -> Unpacked:
    """The records a packed `content` carries, in Flower's layout; FrameError when malformed."""
    extra = set(content) - {WIRE, LARGE_FRAME, LATE}
    if extra:
        raise FrameError(f"records beside the frame: {', '.join(sorted(extra))}")
    wire = content.config_records.get(WIRE)
    if wire is None:
        raise FrameError(f"the record '{WIRE}' is not a ConfigRecord")
    scalars = dict(wire)
    frame = _frame_bytes(content, LARGE_FRAME, scalars.pop(FRAME, None), "frame")
    reader = _Reader(frame)
    if reader.take(2) != MAGIC:
        raise FrameError("not a frame (bad magic bytes)")
    version = reader.byte()
    if version != VERSION:
        raise FrameError(f"frame version {version}; this build reads version {VERSION}")
    codec = reader.short_text("codec")
    layout = _read_layout(reader)
    late_bytes = _late_bytes(content, layout)
    records = _rebuild(layout, reader.rest(), late_bytes, scalars)
    return Unpacked(records, codec)


def scalars(content: RecordDict) -> ConfigRecord | None:
    """The record that holds a request's config entries: `wire` when packed, else `config`."""
    return content.config_records.get(WIRE if is_packed(content) else keys.CONFIG)


def late_record(content: RecordDict):
    """The record that carries a packed content's late arrays, or None."""
    return content.get(LATE) if is_packed(content) else None


# ---------------------------------------------------------------- writing
def _short(raw: bytes, what: str) -> bytes:
    if len(raw) > 255:
        raise ValueError(f"a {what} of {len(raw)} bytes does not fit a frame (255 at most)")
    return bytes([len(raw)]) + raw


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _array_header(name: str, value: np.ndarray, late: bool) -> bytes:
    dtype = value.dtype.newbyteorder("=").name
    if dtype not in DTYPES:
        raise ValueError(f"array '{name}' is {dtype}; a frame carries {', '.join(DTYPES)}")
    dims = b"".join(_varint(dim) for dim in value.shape)
    return b"".join(
        [
            _short(name.encode(), "array name"),
            bytes([DTYPES.index(dtype), int(late), value.ndim]),
            dims,
        ]
    )


def _little_endian(value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))


def _as_array_record(frame: bytes) -> ArrayRecord:
    return ArrayRecord({FRAME: Array(np.frombuffer(frame, dtype=np.uint8))})


# ---------------------------------------------------------------- reading
@dataclass(frozen=True)
class _Field:
    """One entry of the frame's layout: a record and what it holds."""

    kind: bytes
    name: str
    count: int
    arrays: tuple[tuple[str, np.dtype, bool, tuple[int, ...]], ...] = ()


class _Reader:
    """A cursor over a frame; every read past its end is a FrameError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = memoryview(data), 0

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

    def short_text(self, what: str) -> str:
        raw = self.take(self.byte())
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise FrameError(f"a {what} in the frame's header is not UTF-8") from None

    def bounded(self, what: str) -> int:
        """A count no larger than the bytes left (each counted thing takes at least one)."""
        count = self.varint()
        if count > len(self.data) - self.at:
            raise FrameError(f"the frame says {count} {what}; its header is shorter")
        return count

    def rest(self) -> memoryview:
        return self.data[self.at :]


def _frame_bytes(content: RecordDict, large_key: str, small: object, what: str) -> bytes:
    """A frame from its bytes entry, or from the uint8 array of a large frame's record."""
    if large_key in content:
        record = content.array_records.get(large_key)
        if small is not None or record is None or list(record) != [FRAME]:
            raise FrameError(f"the {what} travels twice, or its record is not one array")
        array = record[FRAME].numpy()
        if array.dtype != np.uint8 or array.ndim != 1:
            raise FrameError(f"the {what} array is {array.dtype} of rank {array.ndim}")
        return array.tobytes()
    if not isinstance(small, bytes):
        raise FrameError(f"the {what} is missing or not bytes")
    return small


def _read_layout(reader: _Reader) -> list[_Field]:
    layout = []
    for _ in range(reader.bounded("records")):
        kind = reader.take(1)
        if kind not in KINDS:
            raise FrameError(f"unknown record kind {kind!r}")
        name = reader.short_text("record name")
        if kind == b"a":  # each array is described in the header: at least 4 bytes
            count = reader.bounded("arrays")
            arrays = tuple(_read_array_header(reader) for _ in range(count))
        else:  # scalar entries travel beside the frame; `_rebuild` counts them
            count, arrays = reader.varint(), ()
        layout.append(_Field(kind, name, count, arrays))
    return layout


def _read_array_header(reader: _Reader) -> tuple[str, np.dtype, bool, tuple[int, ...]]:
    name = reader.short_text("array name")
    code, flags, rank = reader.byte(), reader.byte(), reader.byte()
    if code >= len(DTYPES):
        raise FrameError(f"array '{name}' has dtype code {code}; known codes: 0..{len(DTYPES) - 1}")
    if flags > 1 or rank > MAX_RANK:
        raise FrameError(f"array '{name}' has flags {flags} and rank {rank}")
    dims = tuple(reader.varint() for _ in range(rank))
    return name, np.dtype(DTYPES[code]).newbyteorder("<"), bool(flags), dims


def _late_bytes(content: RecordDict, layout: list[_Field]) -> memoryview:
    has_late = any(late for field in layout for _, _, late, _ in field.arrays)
    if not has_late:
        if LATE in content:
            raise FrameError("a late frame without late arrays")
        return memoryview(b"")
    config = content.config_records.get(LATE)
    small = config.get(FRAME) if config is not None else None
    if config is not None and list(config) != [FRAME]:
        raise FrameError("the late frame's record holds more than the frame")
    frame = _frame_bytes(content, LATE if config is None else "", small, "late frame")
    if frame[:2] != LATE_MAGIC or frame[2:3] != bytes([VERSION]):
        raise FrameError("the late frame does not start with its magic bytes and version")
    return memoryview(frame)[3:]


def _rebuild(layout: list[_Field], data: memoryview, late: memoryview, scalars: dict) -> RecordDict:
    """The records the layout describes, filled from the data, late data and scalars."""
    sizes = {False: 0, True: 0}
    for field in layout:
        for _, dtype, is_late, dims in field.arrays:
            sizes[is_late] += math.prod(dims) * dtype.itemsize
    if sizes[False] != len(data) or sizes[True] != len(late):
        raise FrameError(
            f"the frame's arrays take {sizes[False]} + {sizes[True]} late bytes; "
            f"it carries {len(data)} + {len(late)}"
        )
    wanted = sum(field.count for field in layout if field.kind != b"a")
    if wanted != len(scalars):
        raise FrameError(f"the frame lists {wanted} scalar entries; {len(scalars)} travel")
    offsets = {False: 0, True: 0}
    entries = iter(scalars.items())
    content = RecordDict()
    for field in layout:
        if field.name in content:
            raise FrameError(f"the record '{field.name}' appears twice")
        if field.kind == b"a":
            record = ArrayRecord()
            for name, dtype, is_late, dims in field.arrays:
                source, start = (late if is_late else data), offsets[is_late]
                size = math.prod(dims)
                offsets[is_late] += size * dtype.itemsize
                value = np.frombuffer(source, dtype, size, start).reshape(dims)
                record[name] = Array(value.astype(dtype.newbyteorder("=")))
            content[field.name] = record
            continue
        items = dict(next(entries) for _ in range(field.count))
        try:
            content[field.name] = KINDS[field.kind](items)
        except (TypeError, ValueError) as error:
            raise FrameError(f"record '{field.name}': {error}") from None
    return content
