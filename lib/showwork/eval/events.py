"""TensorBoard event files, read without TensorFlow.

An event file is a sequence of TFRecords (length, CRC of the length, an
`Event` protobuf, CRC of the data); tensorboardX ships the protobuf classes.
The report reads training curves from these files, the same files a user
opens in TensorBoard. A torn record at the end (a writer killed mid-write)
ends the read instead of failing it; a corrupt length is an error.
"""

from __future__ import annotations

import struct


def scalars(data: bytes) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in one event file, in file order."""
    from tensorboardX.proto import event_pb2

    out, offset = [], 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        start, end = offset + 12, offset + 12 + length
        if end + 4 > len(data):
            break  # torn tail
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
