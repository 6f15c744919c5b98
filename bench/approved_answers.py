"""Approved answers at scale: approving, loading and answering with 1,000 of them on the embedded database.

    .venv/bin/python -m bench.approved_answers [--count 1000] [--data tests/data/faq/atec_faq_tune.json] [--import-sheet]

The approved questions are real customer questions from the sets of tests/data/faq/ (ATEC and BQ, see
tests/data/README.md): the standard question of each entry of the set ``--data`` names (``--every-phrasing``: its
similar questions too, each approved on its own with another reply), then the other sets' standard questions and
queries, up to ``--count``. Each is stored as a customer's message with a model reply and approved through
:func:`models.knowledge.approved.approve` (one transaction each, as ``kefu answers approve`` does). Then: the FAQ
sync's load of all of them (the index rebuild every process does after a change; jieba's dictionary was loaded by
the first approval), and ``decide()`` on the set's
paraphrase queries: p50/p99 per call and right / wrong / abstained (a query expecting entry E is right when it is
answered with the approved answer of one of E's phrasings; any other answer is wrong, though an approved question of
another set may mean the same; queries expecting no entry are negatives). ``--import-sheet``: then ``--data``'s
entries are imported as an FAQ sheet and :func:`models.knowledge.approved.overlaps` (the warning ``kefu kb import``
prints) is timed and its warnings counted: how many name an approved answer of one of ``--data``'s own questions
(a true duplicate: the sheet holds that very question) and how many another set's. Refusals are counted by reason: ATEC
writes amounts and numbers as ``***``, refused as masked personal data is, and a question an earlier approval
already answers is refused as it would be for an operator. SQLite in a temporary
directory; nothing else runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from bench.faq_eval import DATA, load
from bench.stats import pct
from models.dialogue import HandOff, Message, decide
from models.infra.db import make_engine, make_session_factory, transaction
from models.infra.migrate import upgrade
from models.knowledge import approved, store
from models.knowledge.documents import FaqRow, ParsedDocument
from models.knowledge.faq_sync import FaqSync
from models.knowledge.tokens import tokens
from models.settings import Settings
from models.states import ReplySource
from models.tables import ConversationRecord, InboundRecord, ReplyRecord


def questions(first: Path, count: int, every_phrasing: bool) -> tuple[list[str], dict[str, str]]:
    """Up to ``count`` distinct real questions: the standard question of each of ``first``'s entries (with
    ``every_phrasing`` its similar questions too, each approved on its own), then the other sets' standard
    questions and queries; and the entry of ``first`` each of its questions belongs to."""
    seen: dict[str, None] = {}
    entry_of: dict[str, str] = {}
    for path in (first, *sorted(set(DATA.glob("*_faq_*.json")) - {first})):
        entries, queries = load(path)
        for entry in entries:
            for text in entry.questions if every_phrasing and path == first else entry.questions[:1]:
                seen.setdefault(text, None)
                if path == first:
                    entry_of.setdefault(text, entry.id)
        if path != first:
            for text, _ in queries:
                seen.setdefault(text, None)
    return list(seen)[:count], entry_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--data", type=Path, default=DATA / "atec_faq_tune.json")
    parser.add_argument("--every-phrasing", action="store_true", help="approve each similar question of the set's "
                        "entries on its own too (near-duplicate approved answers, each with another reply)")
    parser.add_argument("--import-sheet", action="store_true", help="then import --data's entries as an FAQ sheet "
                        "and time and count the import's warnings of approved answers it overlaps")
    args = parser.parse_args()
    texts, entry_of = questions(args.data.resolve(), args.count, args.every_phrasing)
    _, queries = load(args.data)
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(data_dir=Path(folder))
        upgrade(settings)
        engine = make_engine(settings)
        sessions = make_session_factory(engine)
        reply_of: dict[str, int] = {}
        with transaction(sessions) as session:
            conversation = ConversationRecord(channel="web", account="default", peer="bench")
            session.add(conversation)
            session.flush()
            for n, text in enumerate(texts):
                inbound = InboundRecord(conversation_id=conversation.id, channel="web", account="default",
                                        external_id=f"m{n}", text=text)
                session.add(inbound)
                session.flush()
                reply = ReplyRecord(inbound_id=inbound.id, conversation_id=conversation.id,
                                    text=f"答案 {n}", source=ReplySource.MODEL)
                session.add(reply)
                session.flush()
                reply_of[text] = reply.id
        approving, refused = [], Counter[str]()
        for text in texts:
            start = time.perf_counter()
            try:
                with transaction(sessions) as session:
                    approved.approve(session, reply_of[text])
            except approved.NotApprovable as exc:  # ATEC stars numbers ("***"), refused like masked data; or the
                refused[" ".join(str(exc).split()[5:7])] += 1  # question is already answered by an approved one
                del reply_of[text]
                continue
            approving.append(time.perf_counter() - start)
        tokens.cache_clear()  # as in a process that did not approve them: every question segmented again
        start = time.perf_counter()
        FaqSync(sessions, settings).poll()
        loaded = time.perf_counter() - start
        answers_of: dict[str, set[int]] = {}  # an entry of --data -> the approved answers of its phrasings
        for text, entry in entry_of.items():
            if text in reply_of:
                answers_of.setdefault(entry, set()).add(reply_of[text])
        times, right, wrong, abstained = [], 0, 0, 0
        for text, expect in queries:
            tokens.cache_clear()
            start = time.perf_counter()
            decision = decide(settings, Message(text), HandOff.PERSON)
            times.append(time.perf_counter() - start)
            if decision.source is not ReplySource.APPROVED:
                abstained += 1
            elif expect is not None and int(decision.why.rpartition(":")[2]) in answers_of.get(expect, set()):
                right += 1
            else:
                wrong += 1
        overlap = import_sheet(sessions, settings, args.data, reply_of, entry_of) if args.import_sheet else None
        engine.dispose()
    print(f"{len(approving)} approved answers on SQLite; refused: {dict(refused)}")
    print(f"approve(): p50 {statistics.median(approving) * 1e3:.1f} ms, p99 {pct(approving, 99):.1f} ms per answer "
          f"(one transaction each)")
    print(f"FAQ sync load of all of them (read + index rebuild): {loaded * 1e3:.0f} ms")
    print(f"decide() on {len(queries)} paraphrase queries of {args.data.name}: p50 {statistics.median(times) * 1e3:.2f} "
          f"ms, p99 {pct(times, 99):.2f} ms; answered right {right}, wrong {wrong}, abstained {abstained} "
          f"(threshold {settings.faq_threshold})")
    if overlap is not None:
        print(overlap)


def import_sheet(sessions: sessionmaker[Session], settings: Settings, data: Path, reply_of: dict[str, int],
                 entry_of: dict[str, str]) -> str:
    """Import ``data``'s entries as an FAQ sheet, then time :func:`approved.overlaps` on it (tokens not cached, as
    in the ``kefu kb import`` process) and say which approved answers it named."""
    entries, _ = load(data)
    sheet = ParsedDocument(f"{data.stem}.csv", data.stem, "faq_csv", "0" * 64,
                           faq=tuple(FaqRow(e.question, e.similar, e.answer) for e in entries))
    own = {reply_of[text] for text in entry_of if text in reply_of}  # approved answers of --data's own questions
    with transaction(sessions) as session:
        document_id = store.import_document(session, sheet).document.id
        tokens.cache_clear()
        start = time.perf_counter()
        warnings = approved.overlaps(session, document_id, settings)
        took = time.perf_counter() - start
    named = {int(w.split("approved answer of reply #")[1].split()[0]) for w in warnings}
    return (f"import of {data.name} as an FAQ sheet ({len(entries)} entries) over {len(reply_of)} approved answers: "
            f"overlaps() {took * 1e3:.0f} ms, {len(warnings)} warnings; named {len(named & own)} of the {len(own)} "
            f"approved answers of the sheet's own questions, and {len(named - own)} approved answers of other sets' "
            f"questions")


if __name__ == "__main__":
    main()
