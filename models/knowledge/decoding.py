"""Decoding a text file's bytes the way Chinese operators' files come: UTF-8 (a BOM is dropped), else GB18030.

GB18030 is a superset of GBK and GB2312 (what spreadsheet programs on Chinese Windows save CSV as).
Raises :class:`~models.knowledge.documents.UnreadableDocument` when neither decodes the bytes.
"""

from __future__ import annotations

from models.knowledge.documents import UnreadableDocument


def decode(data: bytes, path: str) -> str:
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise UnreadableDocument(path, "not UTF-8 or GB18030 text")
