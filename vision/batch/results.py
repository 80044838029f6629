"""The results file of a batch run: one record per image, JSONL (``.jsonl``) or CSV (``.csv``), appended and
flushed as each result arrives, so a crash loses at most the line being written.

Resuming: `ResultsFile.open` reads what an earlier run wrote. Records without an ``error`` are done and
skipped; records with one are dropped (the image is tried again); a partial last line (a crash mid-write) is
cut off. The file is rewritten (atomically) only when something had to be dropped.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from vision.errors import InvalidArgument

FORMATS = (".jsonl", ".csv")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


class ResultsFile:
    """Records written to ``path``; ``columns`` fix the CSV header (JSONL records keep every key)."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        if path.suffix.lower() not in FORMATS:
            raise InvalidArgument(f"--output {path}: the name must end in {' or '.join(FORMATS)}")
        self.path = path
        self.columns = list(columns)
        self.csv = path.suffix.lower() == ".csv"
        self.done: set[str] = set()
        self._handle: IO[str] | None = None

    # -- resume ---------------------------------------------------------------------------------------------
    def _read(self) -> tuple[list[str], bool]:
        """(the complete lines of finished images, whether anything was dropped)."""
        text = self.path.read_text(encoding="utf-8", errors="replace")
        lines = text.split("\n")
        dropped = lines[-1] != ""  # no newline at the end: the last line was cut by a crash
        lines = lines[:-1]
        if self.csv:
            if not lines or next(csv.reader([lines[0]])) != self.columns:
                raise InvalidArgument(
                    f"--output {self.path} exists but is not a results file of this command (its header "
                    "differs): choose another name, or delete it to start again"
                )
            header, lines = lines[:1], lines[1:]
        kept: list[str] = []
        for line in lines:
            record = self._parse(line)
            if record is None or record.get("error"):
                dropped = True
                continue
            self.done.add(str(record["path"]))
            kept.append(line)
        return ((header if self.csv else []) + kept), dropped

    def _parse(self, line: str) -> dict[str, Any] | None:
        try:
            if self.csv:
                row = next(csv.reader([line]))
                return dict(zip(self.columns, row, strict=True)) if len(row) == len(self.columns) else None
            record = json.loads(line)
            return record if isinstance(record, dict) and "path" in record else None
        except (ValueError, StopIteration):
            return None

    def open(self) -> ResultsFile:
        """Open for appending, after reading (and if needed repairing) what an earlier run left."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size:
            lines, dropped = self._read()
            if dropped:
                tmp = self.path.with_name(f".{self.path.name}.tmp")
                tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
                os.replace(tmp, self.path)
            self._handle = self.path.open("a", encoding="utf-8", newline="")
            if self.csv and not lines:
                self._write_row(self.columns)
        else:
            self._handle = self.path.open("w", encoding="utf-8", newline="")
            if self.csv:
                self._write_row(self.columns)
        return self

    # -- writing --------------------------------------------------------------------------------------------
    def _write_row(self, cells: Sequence[str]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(cells)
        self._emit(buffer.getvalue())

    def _emit(self, text: str) -> None:
        assert self._handle is not None, "open() first"
        self._handle.write(text)
        self._handle.flush()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (one line) and flush it to the OS."""
        if self.csv:
            self._write_row([_cell(record.get(c)) for c in self.columns])
        else:
            self._emit(json.dumps(record, ensure_ascii=False) + "\n")

    def close(self) -> None:
        """Flush and fsync: the results are on disk when the command returns."""
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def __enter__(self) -> ResultsFile:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
