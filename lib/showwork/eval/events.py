"""TensorBoard event files, read without TensorFlow.

An event file is a sequence of TFRecords (length, CRC of the length, an
`Event` protobuf, CRC of the data); tensorboardX ships the protobuf classes.
The report reads training curves from these files, the same files a user
opens in TensorBoard. A torn record at the end (a writer killed mid-write)
ends the read instead of failing it; a record whose length or data fails its
CRC is an error (CorruptEvents), never read as a short file.
"""

from __future__ import annotations

import struct

import google_crc32c

from showwork.errors import RunError


class CorruptEvents(RunError):
    """An event file record whose CRC does not match: the file was damaged, not cut."""


def _masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def scalars(data: bytes) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in one event file, in file order."""
    from tensorboardX.proto import event_pb2

    out, offset = [], 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        if struct.unpack_from("<I", data, offset + 8)[0] != _masked_crc(data[offset:offset + 8]):
            raise CorruptEvents(f"event record at byte {offset}: its length fails its CRC")
        start, end = offset + 12, offset + 12 + length
        if end + 4 > len(data):
            break  # torn tail: the length is sound, the data was cut
        if struct.unpack_from("<I", data, end)[0] != _masked_crc(data[start:end]):
            raise CorruptEvents(f"event record at byte {offset}: its data fails its CRC")
        event = event_pb2.Event.FromString(data[start:end])
        for value in event.summary.value:
            if value.HasField("simple_value"):
                out.append((int(event.step), value.tag, float(value.simple_value)))
        offset = end + 4
    return out


def curves(files: list[bytes]) -> list[dict]:
    """One row per step ({"step": s, tag: value, ...}) from a stage's event
    files in write order; a step written again (a run resumed from an older
    checkpoint replays it) keeps its latest values."""
    rows: dict[int, dict] = {}
    for data in files:
        for step, tag, value in scalars(data):
            rows.setdefault(step, {"step": step})[tag] = value
    return [rows[s] for s in sorted(rows)]
