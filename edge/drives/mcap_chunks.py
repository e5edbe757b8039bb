"""MCAP chunk checksums: written after the fact for rosbags' writer (which leaves them 0), and where damage lies.

A chunk record is: opcode 0x06, uint64 length, then uint64 message_start_time, uint64 message_end_time, uint64
uncompressed_size, uint32 uncompressed_crc, string compression, uint64 compressed size, records (MCAP spec). A CRC
of 0 means "not computed", so readers cannot tell a damaged chunk from a good one: `write_chunk_crcs` fills them
in place (CRC-32 of the uncompressed records, as the spec says), and every reader (rosbags, the `mcap` library,
`mcap doctor`) then detects damage.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

_CRC_AT = 1 + 8 + 8 + 8 + 8  # opcode, record length, start time, end time, uncompressed size


def _decompress(compression: str, data: bytes, size: int) -> bytes:
    if compression == "":
        return data
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    if compression == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    raise ValueError(f"unsupported chunk compression '{compression}'")


def _chunk_offsets(fh: BinaryIO) -> list[int]:
    from mcap.reader import make_reader

    fh.seek(0)
    summary = make_reader(fh).get_summary()
    if summary is None:
        raise ValueError("no summary section (file not closed properly)")
    return sorted(ci.chunk_start_offset for ci in summary.chunk_indexes)


def write_chunk_crcs(path: str | Path) -> int:
    """Fill in the CRC of every chunk of the MCAP file `path` whose CRC is 0; returns how many were written."""
    written = 0
    with Path(path).open("r+b") as fh:
        for offset in _chunk_offsets(fh):
            fh.seek(offset)
            op, _length, _start, _end, size, crc, n = struct.unpack("<BQQQQII", fh.read(_CRC_AT + 4 + 4))
            if op != 0x06 or crc != 0:
                continue
            compression = fh.read(n).decode()
            (clen,) = struct.unpack("<Q", fh.read(8))
            crc = zlib.crc32(_decompress(compression, fh.read(clen), size))
            fh.seek(offset + _CRC_AT)
            fh.write(struct.pack("<I", crc))
            written += 1
    return written


def chunk_topics(path: str | Path) -> dict[tuple[int, int], list[str]]:
    """(message_start_time, message_end_time) of each chunk -> the topics it holds, from the summary ({} if none)."""
    from mcap.reader import make_reader

    try:
        with Path(path).open("rb") as fh:
            summary = make_reader(fh).get_summary()
    except Exception:
        return {}
    if summary is None:
        return {}
    out: dict[tuple[int, int], list[str]] = {}
    for ci in summary.chunk_indexes:
        topics = sorted({summary.channels[c].topic for c in ci.message_index_offsets if c in summary.channels})
        out[(ci.message_start_time, ci.message_end_time)] = topics
    return out
