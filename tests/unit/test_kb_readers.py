"""Reading knowledge-base files: every format into passages or FAQ rows, and unreadable files named with their problem.

Fixture files are written by each test (PDF with pypdf, DOCX with python-docx, XLSX with openpyxl); their text is
hand-written for these tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from models.knowledge import faq_sheet, readers
from models.knowledge.documents import FaqRow, Passage, Section, UnreadableDocument
from models.knowledge.passages import split

MARKDOWN = """# 退货政策

签收后 7 天内，商品完好可申请**无理由退货**。

## 运费

质量问题的退货运费由本店承担，详见[运费说明](https://example.com/fee)。

## 退款时间

审核通过后 1-3 个工作日原路退款。
"""


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def test_markdown_becomes_passages_under_their_headings(tmp_path: Path) -> None:
    doc = readers.read(write(tmp_path, "returns.md", MARKDOWN))
    assert (doc.source, doc.title, doc.kind) == ("returns.md", "退货政策", "markdown")
    assert doc.passages == (
        Passage("退货政策", "签收后 7 天内，商品完好可申请无理由退货。"),
        Passage("运费", "质量问题的退货运费由本店承担，详见运费说明。"),
        Passage("退款时间", "审核通过后 1-3 个工作日原路退款。"),
    )
    assert doc.faq == () and len(doc.content_hash) == 64


def test_plain_text_in_gbk_is_decoded_and_titled_by_its_file_name(tmp_path: Path) -> None:
    doc = readers.read(write(tmp_path, "营业时间.txt", "每天 9:00-21:00 在线。\n\n节假日照常。".encode("gbk")))
    assert (doc.title, doc.kind) == ("营业时间", "text")
    assert doc.passages == (Passage("", "每天 9:00-21:00 在线。\n节假日照常。"),)


def test_html_drops_tags_scripts_and_styles(tmp_path: Path) -> None:
    html = ("<html><head><title>配送说明</title><style>p{color:red}</style></head><body>"
            "<script>alert('x')</script><h1>配送</h1><p>全国包邮，<b>偏远地区</b>除外。</p>"
            "<h2>时效</h2><ul><li>江浙沪次日达</li><li>其他地区 2-4 天</li></ul></body></html>")
    doc = readers.read(write(tmp_path, "shipping.html", html))
    assert (doc.title, doc.kind) == ("配送说明", "html")
    assert doc.passages == (Passage("配送", "全国包邮，偏远地区除外。"), Passage("时效", "江浙沪次日达\n其他地区 2-4 天"))


def test_pdf_pages_become_passages(tmp_path: Path) -> None:
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    for line in (b"Returns are accepted within seven days.", b"Refunds take three working days."):
        page = writer.add_blank_page(612, 792)
        font = DictionaryObject({NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
                                 NameObject("/BaseFont"): NameObject("/Helvetica")})
        page[NameObject("/Resources")] = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
        stream = DecodedStreamObject()
        stream.set_data(b"BT /F1 12 Tf 72 720 Td (" + line + b") Tj ET")
        page.replace_contents(stream)  # type: ignore[arg-type]  # pypdf accepts a decoded stream too
    writer.add_metadata({"/Title": "Return policy"})
    path = tmp_path / "policy.pdf"
    writer.write(path)
    doc = readers.read(path)
    assert (doc.title, doc.kind) == ("Return policy", "pdf")
    assert doc.passages == (Passage("第1页", "Returns are accepted within seven days."),
                            Passage("第2页", "Refunds take three working days."))


def test_docx_headings_paragraphs_and_tables(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    document.add_heading("会员说明", level=1)
    document.add_paragraph("注册即成为普通会员。")
    document.add_heading("积分", level=2)
    document.add_paragraph("每消费 1 元积 1 分。")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "金卡", "九五折"
    path = tmp_path / "members.docx"
    document.save(str(path))
    doc = readers.read(path)
    assert (doc.title, doc.kind) == ("会员说明", "docx")
    assert doc.passages == (Passage("会员说明", "注册即成为普通会员。"),
                            Passage("积分", "每消费 1 元积 1 分。\n金卡 | 九五折"))


def test_csv_faq_with_chinese_headers_and_similar_questions(tmp_path: Path) -> None:
    sheet = ("问题,相似问,答案\n"
             "几点发货？,什么时候发货|多久能发货；下单后多久发货,付款后 24 小时内发货。\n"
             '支持货到付款吗？,"可以货到付款吗\n能到付吗",暂不支持货到付款。\n'
             ",,\n")
    doc = readers.read(write(tmp_path, "faq.csv", sheet.encode("utf-8-sig")))
    assert doc.kind == "faq_csv" and doc.passages == ()
    assert doc.faq == (FaqRow("几点发货？", ("什么时候发货", "多久能发货", "下单后多久发货"), "付款后 24 小时内发货。"),
                       FaqRow("支持货到付款吗？", ("可以货到付款吗", "能到付吗"), "暂不支持货到付款。"))


def test_csv_faq_with_english_headers_in_another_order_and_no_similar_column(tmp_path: Path) -> None:
    doc = readers.read(write(tmp_path, "faq.csv", "Answer,Question\nWe ship daily.,When do you ship?\n"))
    assert doc.faq == (FaqRow("When do you ship?", (), "We ship daily."),)


def test_xlsx_faq(tmp_path: Path) -> None:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["question", "similar questions", "answer"])
    sheet.append(["怎么开发票？", "能开发票吗｜发票怎么开", "在订单详情页申请电子发票。"])
    sheet.append([None, None, None])
    path = tmp_path / "faq.xlsx"
    book.save(path)
    doc = readers.read(path)
    assert doc.kind == "faq_xlsx"
    assert doc.faq == (FaqRow("怎么开发票？", ("能开发票吗", "发票怎么开"), "在订单详情页申请电子发票。"),)


@pytest.mark.parametrize(("name", "content", "problem"), [
    ("notes.rtf", b"{\\rtf1}", "unsupported file type '.rtf'"),
    ("broken.pdf", b"not a pdf at all", "not a readable PDF"),
    ("broken.docx", b"PK not really a zip", "not a readable DOCX file"),
    ("broken.xlsx", b"nope", "not a readable XLSX workbook"),
    ("empty.md", b"# \n\n", "no text found"),
    ("binary.txt", b"\xff\xfe\xfa\x00\x81", "not UTF-8 or GB18030 text"),
    ("faq.csv", "标题,内容\n几点发货,今天\n".encode(), "no question/问题 and no answer/答案 column"),
    ("faq.csv", "问题,答案\n几点发货,\n".encode(), "row 2: a question without an answer"),
    ("faq.csv", "问题,答案\n".encode(), "no FAQ entries under the header row"),
])
def test_unreadable_files_are_named_with_their_problem(tmp_path: Path, name: str, content: bytes, problem: str) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(UnreadableDocument) as caught:
        readers.read(path)
    assert str(caught.value).startswith(f"{path}: ") and problem in caught.value.problem


@pytest.mark.parametrize("name", ["gone.md", "gone"])
def test_a_missing_file_is_named(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnreadableDocument, match=rf"{name}: No such file"):
        readers.read(tmp_path / name)


def test_passages_are_bounded_and_keep_every_sentence() -> None:
    text = "第一句话。" * 50 + "\n\n短段落。\n\n" + "x" * 130
    passages = split([Section("标题", text)], max_chars=60)
    assert all(0 < len(p.text) <= 60 and p.heading == "标题" for p in passages)
    assert "".join(p.text for p in passages).replace("\n", "") == text.replace("\n", "")


def test_short_paragraphs_are_packed_together_up_to_the_bound() -> None:
    assert split([Section("", "一。\n\n二。\n\n三。")], max_chars=5) == (Passage("", "一。\n二。"), Passage("", "三。"))


def test_similar_questions_split_on_every_separator_without_repeats() -> None:
    assert faq_sheet.split_similar("甲|乙｜丙；丁;戊\n甲\r\n 己 ") == ("甲", "乙", "丙", "丁", "戊", "己")
