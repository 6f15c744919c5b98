"""Reading one knowledge-base file into a :class:`~models.knowledge.documents.ParsedDocument`.

Markdown (``.md``, ``.markdown``), plain text (``.txt``), HTML (``.html``, ``.htm``; tags stripped with the
standard library's parser, scripts and styles dropped), PDF (pypdf) and DOCX (python-docx) become passages
under their headings (:mod:`models.knowledge.passages`); CSV and XLSX FAQ sheets become FAQ rows
(:mod:`models.knowledge.faq_sheet`). Text files may be UTF-8 (with or without a BOM) or GB18030/GBK.

Raises :class:`~models.knowledge.documents.UnreadableDocument` (naming the file and the problem) for an
unsupported type, a file too large, undecodable text, a damaged or encrypted PDF/DOCX/XLSX, or a file
with no text at all; nothing else for a bad file. pypdf, python-docx and openpyxl load only when needed.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

from models.knowledge import faq_sheet
from models.knowledge.decoding import decode
from models.knowledge.documents import ParsedDocument, Section, UnreadableDocument
from models.knowledge.passages import split

MAX_BYTES = 50 * 1024 * 1024
_ATX_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_EMPHASIS = re.compile(r"(\*\*|__|`)")


def markdown_sections(text: str) -> tuple[str, list[Section]]:
    """The first level-1 heading (or "") and the sections under each ATX heading; fenced code is kept as text."""
    title, heading, lines, sections = "", "", list[str](), list[Section]()
    for line in text.splitlines():
        match = _ATX_HEADING.match(line)
        if match is None:
            lines.append(_MD_EMPHASIS.sub("", _MD_LINK.sub(r"\1", line)))
            continue
        sections.append(Section(heading, "\n".join(lines)))
        heading, lines = match.group(2), []
        if not title and len(match.group(1)) == 1:
            title = heading
    sections.append(Section(heading, "\n".join(lines)))
    return title, sections


class _HtmlText(HTMLParser):
    """Text of an HTML page under its h1–h6 headings; script, style, head and template content dropped."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "head", "svg"})
    _BLOCKS = frozenset({"p", "div", "br", "li", "tr", "section", "article", "table", "ul", "ol", "dd", "dt",
                         "blockquote", "pre", "hr", "header", "footer", "main", "aside", "nav"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title, self.sections = "", list[Section]()
        self._heading, self._text, self._new_heading = "", list[str](), list[str]()
        self._skipping, self._in_title, self._in_heading = 0, False, False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag == "title":
            self._in_title = True
        elif re.fullmatch(r"h[1-6]", tag):
            self._in_heading, self._new_heading = True, []
        elif tag in self._BLOCKS:
            self._text.append("\n\n" if tag == "p" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag == "title":
            self._in_title = False
        elif re.fullmatch(r"h[1-6]", tag) and self._in_heading:
            self._in_heading = False
            self.sections.append(Section(self._heading, "".join(self._text)))
            self._heading, self._text = " ".join("".join(self._new_heading).split()), []
            if tag == "h1" and not self.title:
                self.title = self._heading
        elif tag in self._BLOCKS:
            self._text.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title and not self.title:
            self.title = " ".join(data.split())
        elif self._skipping or self._in_title:
            return
        elif self._in_heading:
            self._new_heading.append(data)
        else:
            self._text.append(data)

    def close(self) -> None:
        super().close()
        self.sections.append(Section(self._heading, "".join(self._text)))


def html_sections(text: str) -> tuple[str, list[Section]]:
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    return parser.title, parser.sections


def pdf_sections(path: Path) -> tuple[str, list[Section]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise UnreadableDocument(str(path), "the PDF is encrypted; save an unencrypted copy")
        pages = [Section(f"第{n}页", page.extract_text() or "") for n, page in enumerate(reader.pages, 1)]
        title = str(reader.metadata.title or "") if reader.metadata else ""
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise UnreadableDocument(str(path), f"not a readable PDF ({type(exc).__name__}: {exc})") from None
    return title, pages


def docx_sections(path: Path) -> tuple[str, list[Section]]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise UnreadableDocument(str(path), f"not a readable DOCX file ({type(exc).__name__})") from None
    title, heading, lines, sections = document.core_properties.title or "", "", list[str](), list[Section]()
    for paragraph in document.paragraphs:
        style = paragraph.style.name if paragraph.style is not None and paragraph.style.name else ""
        if style == "Title" or style.startswith("Heading"):
            sections.append(Section(heading, "\n\n".join(lines)))
            heading, lines = paragraph.text.strip(), []
            title = title or heading
        elif paragraph.text.strip():
            lines.append(paragraph.text)
    for table in document.tables:
        lines += [" | ".join(cell.text.strip() for cell in row.cells) for row in table.rows]
    sections.append(Section(heading, "\n\n".join(lines)))
    return title, sections


def _text_reader(parse: Callable[[str], tuple[str, list[Section]]]) -> Callable[[Path, bytes], tuple[str, list[Section]]]:
    return lambda path, data: parse(decode(data, str(path)))


_PROSE: dict[str, tuple[str, Callable[[Path, bytes], tuple[str, list[Section]]]]] = {
    ".md": ("markdown", _text_reader(markdown_sections)),
    ".markdown": ("markdown", _text_reader(markdown_sections)),
    ".txt": ("text", _text_reader(lambda text: ("", [Section("", text)]))),
    ".html": ("html", _text_reader(html_sections)),
    ".htm": ("html", _text_reader(html_sections)),
    ".pdf": ("pdf", lambda path, _: pdf_sections(path)),
    ".docx": ("docx", lambda path, _: docx_sections(path)),
}
SUPPORTED = (*_PROSE, *faq_sheet.SUPPORTED)


def read(path: Path, source: str | None = None) -> ParsedDocument:
    """The parsed document; ``source`` names it in the knowledge base (default: the file's name)."""
    suffix = path.suffix.lower()
    try:
        size = path.stat().st_size
        if suffix not in SUPPORTED:
            raise UnreadableDocument(str(path), f"unsupported file type {suffix or '(none)'!r}; supported: "
                                                + ", ".join(SUPPORTED))
        if size > MAX_BYTES:
            raise UnreadableDocument(str(path), f"larger than {MAX_BYTES // (1024 * 1024)} MB")
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableDocument(str(path), exc.strerror or type(exc).__name__) from None
    digest, name = hashlib.sha256(data).hexdigest(), source or path.name
    if suffix in faq_sheet.SUPPORTED:
        kind, rows = faq_sheet.read(path, data)
        return ParsedDocument(name, path.stem[:256], kind, digest, faq=rows)
    kind, parse = _PROSE[suffix]
    title, sections = parse(path, data)
    passages = split(sections)
    if not passages:
        raise UnreadableDocument(str(path), "no text found" + (" (a scanned PDF needs OCR first)" if kind == "pdf"
                                                                 else ""))
    return ParsedDocument(name, (title.strip() or path.stem)[:256], kind, digest, passages=passages)
