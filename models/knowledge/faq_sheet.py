"""FAQ sheets (CSV, XLSX): one entry per row, in columns question, similar questions, answer.

The header row names the columns, in English or Chinese, in any order and case: ``question`` / ``问题`` /
``标准问``, ``similar questions`` / ``相似问`` / ``相似问题`` (optional), ``answer`` / ``答案`` / ``回答``. Similar
questions in one cell are separated by newlines, ``|``, ``｜``, ``；`` or ``;``. Empty rows are skipped.
CSV may be UTF-8 (with or without a BOM) or GB18030/GBK; XLSX is read from its first worksheet (openpyxl).

Raises :class:`~models.knowledge.documents.UnreadableDocument` naming the file (and the row) for a sheet
without question or answer column, a row with a question and no answer (or the reverse), a damaged
workbook, or a sheet with no entries.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from models.knowledge.decoding import decode
from models.knowledge.documents import FaqRow, UnreadableDocument

SUPPORTED = (".csv", ".xlsx")
HEADERS = {
    "question": ("question", "questions", "问题", "标准问", "标准问题", "问"),
    "similar": ("similar questions", "similar question", "similar", "similar_questions", "相似问", "相似问题",
                "相似问法", "相似问题列表"),
    "answer": ("answer", "answers", "答案", "回答", "回复", "答"),
}
_SIMILAR_SEPARATORS = re.compile(r"[\r\n|｜；;]+")


def split_similar(cell: str) -> tuple[str, ...]:
    """The similar questions of one cell, stripped, without empties or repeats."""
    seen: dict[str, None] = {}
    for part in _SIMILAR_SEPARATORS.split(cell):
        if part.strip():
            seen.setdefault(part.strip(), None)
    return tuple(seen)


def columns(header: Sequence[str], path: str) -> dict[str, int]:
    """Which column holds what; raises UnreadableDocument without a question or an answer column."""
    found: dict[str, int] = {}
    for index, name in enumerate(header):
        folded = " ".join(name.replace("_", " ").split()).casefold()
        for field, names in HEADERS.items():
            if field not in found and (folded in names or folded.replace(" ", "_") in names):
                found[field] = index
    missing = [f"{HEADERS[field][0]}/{HEADERS[field][2]}" for field in ("question", "answer") if field not in found]
    if missing:
        raise UnreadableDocument(path, f"no {' and no '.join(missing)} column in the header row "
                                       f"(found: {', '.join(h for h in header if h) or 'nothing'})")
    return found


def rows(table: Iterable[Sequence[str]], path: str) -> tuple[FaqRow, ...]:
    """FAQ rows of a table whose first non-empty row is its header."""
    lines = iter(table)
    header = next((row for row in lines if any(cell.strip() for cell in row)), None)
    if header is None:
        raise UnreadableDocument(path, "the sheet is empty")
    at = columns([cell.strip() for cell in header], path)
    entries = [entry for number, row in enumerate(lines, 2) if (entry := _row(row, at, number, path)) is not None]
    if not entries:
        raise UnreadableDocument(path, "no FAQ entries under the header row")
    return tuple(entries)


def _row(row: Sequence[str], at: dict[str, int], number: int, path: str) -> FaqRow | None:
    """The entry in one row, None for an empty row."""
    def cell(field: str) -> str:
        index = at.get(field)
        return row[index].strip() if index is not None and index < len(row) else ""

    question, answer = cell("question"), cell("answer")
    if not question and not answer:
        return None
    if not question or not answer:
        raise UnreadableDocument(path, f"row {number}: a {'question' if question else 'answer'} without "
                                       f"{'an answer' if question else 'a question'}")
    return FaqRow(question, tuple(s for s in split_similar(cell("similar")) if s != question), answer)


def read(path: Path, data: bytes) -> tuple[str, tuple[FaqRow, ...]]:
    """The sheet's kind (``faq_csv`` or ``faq_xlsx``) and its rows."""
    if path.suffix.lower() == ".csv":
        return "faq_csv", rows(csv.reader(io.StringIO(decode(data, str(path)), newline="")), str(path))
    return "faq_xlsx", rows(_xlsx_table(data, str(path)), str(path))


def _xlsx_table(data: bytes, path: str) -> list[list[str]]:
    from openpyxl import load_workbook

    try:
        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise UnreadableDocument(path, f"not a readable XLSX workbook ({type(exc).__name__})") from None
    try:
        sheet = book.worksheets[0]
        return [["" if value is None else str(value) for value in row] for row in sheet.iter_rows(values_only=True)]
    finally:
        book.close()
