"""What is still readable of a damaged rosbag2 sqlite3 file (cut short by a crash, a full disk, a bad copy).

SQLite refuses a file shorter than the page count its header declares ("database disk image is malformed"), even
though the pages before the cut are intact. A copy padded with zero pages to the declared size opens; its rows are
then read in insertion (= recording) order until the first missing page, so every message before the damage is
kept and the point of damage is known.
"""

from __future__ import annotations

import shutil
import sqlite3
import struct
import tempfile
from pathlib import Path
from typing import Iterator

from edge.errors import BagError


class SqliteSalvage:
    """Topics, definitions and messages of a damaged .db3, read up to the damage (`error` says where it stopped)."""

    def __init__(self, db: Path, message_zstd: bool = False) -> None:
        self.db = db
        self.message_zstd = message_zstd
        self.error: str | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="edge-salvage-")
        padded = Path(self._tmp.name) / db.name
        shutil.copyfile(db, padded)
        with padded.open("r+b") as fh:
            head = fh.read(100)
            if len(head) < 100 or not head.startswith(b"SQLite format 3\x00"):
                self.close()
                raise BagError(f"{db}: not an SQLite database (header missing or damaged)")
            page = struct.unpack(">H", head[16:18])[0]
            page = 65536 if page == 1 else page
            pages = struct.unpack(">I", head[28:32])[0]
            fh.seek(0, 2)
            if fh.tell() < page * pages:
                fh.write(b"\0" * (page * pages - fh.tell()))
        self.con = sqlite3.connect(f"file:{padded}?mode=ro&immutable=1", uri=True)
        try:
            cols = {r[1] for r in self.con.execute("PRAGMA table_info(topics)")}
            qos = "offered_qos_profiles" if "offered_qos_profiles" in cols else "''"
            self.topics = {int(i): (str(n), str(t), str(q or "")) for i, n, t, q in self.con.execute(
                f"SELECT id, name, type, {qos} FROM topics")}
            tables = {r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            self.definitions: dict[str, tuple[str, str]] = {}
            if "message_definitions" in tables:
                for typ, enc, text in self.con.execute(
                        "SELECT topic_type, encoding, encoded_message_definition FROM message_definitions"):
                    self.definitions[str(typ)] = (str(enc), str(text))
        except sqlite3.DatabaseError as exc:
            self.close()
            raise BagError(f"{db}: damaged before its topic table could be read ({exc}); nothing is readable") from None

    def messages(self) -> Iterator[tuple[int, int, bytes]]:
        """(topic id, bag time, CDR bytes) in recording order, up to the first damaged page."""
        decompress = None
        if self.message_zstd:
            import zstandard

            decompress = zstandard.ZstdDecompressor().decompress
        n = 0
        last = None
        try:
            for topic_id, t, data in self.con.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY id"):
                n += 1
                last = int(t)
                yield int(topic_id), last, decompress(data) if decompress else bytes(data)
        except sqlite3.DatabaseError as exc:
            self.error = (f"{self.db}: damaged after {n} messages (bag time {last} ns) ({exc}); the messages before "
                          "the damage were read, the rest is lost")

    def close(self) -> None:
        if getattr(self, "con", None) is not None:
            self.con.close()
            self.con = None  # type: ignore[assignment]
        self._tmp.cleanup()
