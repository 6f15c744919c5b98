"""``kefu kb import|list|show|delete``: the knowledge base from the command line.

``import PATH…`` reads each file (a directory: every supported file under it, recursively, in name order;
hidden files and other types skipped) with :mod:`models.knowledge.readers` and stores it with
:func:`models.knowledge.store.import_document`, one transaction per file, behind a progress bar on
stderr (shown on a terminal). A file is known by its name, or for a directory's files by their path
relative to it, so importing the same file again updates it in place, and only when its bytes changed.
An FAQ sheet whose entry also answers an approved answer's question is imported with a warning on stderr naming
the approved answer (:func:`models.knowledge.approved.overlaps`). ``list`` keeps approved answers (documents of
kind ``approved``) out of the documents, counted (``--all``: listed apart); ``delete`` of one revokes it, as
``kefu answers revoke`` does.

Exit status: 0 when every file was imported or unchanged; 1 when any could not be (each named on stderr
with its problem, the others are still imported), or ``show``/``delete`` got an unknown id; 2 when the
database cannot be used (not migrated: run ``kefu migrate``; unreachable). Prints ids, names, titles,
counts; ``show`` prints the document's text, which is the operator's own.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from models.infra.db import make_engine, make_session_factory, transaction
from models.knowledge import approved, readers, store
from models.knowledge.documents import UnreadableDocument
from models.settings import Settings


def files_to_import(paths: Sequence[str]) -> Iterator[tuple[Path, str | None]]:
    """(file, source name) for each path: a file as given (named by its file name), a directory's supported files
    (named by their path relative to it). A path that does not exist comes out as itself, for the reader to name."""
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            yield path, None
            continue
        for found in sorted(p for p in path.rglob("*") if p.is_file()):
            relative = found.relative_to(path)
            if not any(part.startswith(".") for part in relative.parts) and found.suffix.lower() in readers.SUPPORTED:
                yield found, relative.as_posix()


def import_paths(sessions: sessionmaker[Session], paths: Sequence[str], out: TextIO | None = None,
                 err: TextIO | None = None, settings: Settings | None = None) -> int:
    """Import every file; 0, or 1 when any file could not be imported. Raises SQLAlchemyError for the database.
    ``settings``: its ``KEFU_FAQ`` and ``KEFU_FAQ_THRESHOLD`` decide which approved answers an FAQ sheet overlaps."""
    out, err, settings = out or sys.stdout, err or sys.stderr, settings or Settings()
    from tqdm import tqdm

    files = list(files_to_import(paths))
    if not files:
        print("kefu: no supported files found (" + ", ".join(readers.SUPPORTED) + ")", file=err)
        return 1
    failed = 0
    with tqdm(files, desc="importing", unit="file", file=err, disable=None, leave=False) as bar:
        for path, source in bar:
            try:
                parsed = readers.read(path, source)
            except UnreadableDocument as exc:
                failed += 1
                bar.write(f"kefu: cannot import {exc}", file=err)
                continue
            with transaction(sessions) as session:
                outcome = store.import_document(session, parsed)
            d = outcome.document
            warnings = _overlaps(sessions, d.id, settings) if parsed.faq else []
            bar.write(f"{outcome.status:<9} #{d.id} v{d.version} {d.source}: {d.passages} passages, {d.faq} FAQ "
                      f"entries ({d.title})", file=out)
            for warning in warnings:
                bar.write(f"kefu: warning: {d.source}: {warning}", file=err)
    print(f"{len(files) - failed} of {len(files)} files imported" + (f"; {failed} could not be" if failed else ""),
          file=err if failed else out)
    return 1 if failed else 0


def _overlaps(sessions: sessionmaker[Session], document_id: int, settings: Settings) -> list[str]:
    """The approved answers an FAQ sheet competes with, read after its commit (the check rebuilds the FAQ index,
    and need not hold the knowledge base's write lock meanwhile)."""
    with sessions() as session:
        return approved.overlaps(session, document_id, settings)


def list_documents(sessions: sessionmaker[Session], out: TextIO | None = None, show_approved: bool = False) -> int:
    """The documents, then (``show_approved``) the approved answers' documents apart, or only their count."""
    out = out or sys.stdout
    with sessions() as session:
        found = store.documents(session)
        revision = store.revision(session)
    documents = [d for d in found if d.kind != store.APPROVED_KIND]
    answers = [d for d in found if d.kind == store.APPROVED_KIND]
    _print_documents(documents, out)
    if show_approved and answers:
        print("\napproved answers (withdraw with kefu answers revoke REPLY_ID):", file=out)
        _print_documents(answers, out)
    print(f"{len(documents)} documents, knowledge-base revision {revision}", file=out)
    if answers and not show_approved:
        print(f"{len(answers)} approved answer{'s' if len(answers) > 1 else ''} not listed (kefu answers list, or "
              f"kefu kb list --all)", file=out)
    return 0


def _print_documents(found: Sequence[store.DocumentInfo], out: TextIO) -> None:
    print(f"{'id':>5} {'ver':>4} {'kind':<9} {'passages':>8} {'faq':>5}  {'updated (UTC)':<16}  source — title", file=out)
    for d in found:
        print(f"{d.id:>5} {d.version:>4} {d.kind:<9} {d.passages:>8} {d.faq:>5}  "
              f"{d.updated_at:%Y-%m-%d %H:%M}  {d.source} — {d.title}", file=out)


def show_document(sessions: sessionmaker[Session], document_id: int, out: TextIO | None = None,
                  err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    with sessions() as session:
        found = store.document(session, document_id)
    if found is None:
        print(f"kefu: no knowledge-base document #{document_id}", file=err)
        return 1
    d, passages, faq = found
    print(f"#{d.id} {d.source} — {d.title}\nkind {d.kind}, version {d.version}, updated {d.updated_at:%Y-%m-%d %H:%M} "
          f"UTC, sha256 {d.content_hash}", file=out)
    for n, p in enumerate(passages, 1):
        print(f"\n[{n}] {p.heading}\n{p.text}" if p.heading else f"\n[{n}]\n{p.text}", file=out)
    for n, f in enumerate(faq, 1):
        similar = "".join(f"\n    相似问: {s}" for s in f.similar)
        print(f"\n[{n}] 问: {f.question}{similar}\n    答: {f.answer}", file=out)
    return 0


def delete_document(sessions: sessionmaker[Session], document_id: int, out: TextIO | None = None,
                    err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    with transaction(sessions) as session:
        deletion = approved.delete_document(session, document_id)
    if deletion is None:
        print(f"kefu: no knowledge-base document #{document_id}", file=err)
        return 1
    removed = deletion.document
    print(f"deleted #{removed.id} {removed.source} (v{removed.version}: {removed.passages} passages, "
          f"{removed.faq} FAQ entries)", file=out)
    if deletion.revoked is not None:
        print(f"revoked the approved answer of reply #{deletion.revoked.reply_id}", file=out)
    return 0


def run(settings: Settings, action: str, paths: Sequence[str] = (), document_id: int | None = None,
        show_approved: bool = False) -> int:
    """One ``kefu kb`` action against the configured database; the exit status."""
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # a damaged PDF is reported once, by name, not as log noise

    def act(sessions: sessionmaker[Session]) -> int:
        if action == "import":
            return import_paths(sessions, paths, settings=settings)
        if action == "list":
            return list_documents(sessions, show_approved=show_approved)
        assert document_id is not None
        return (show_document if action == "show" else delete_document)(sessions, document_id)

    return on_knowledge_base(settings, act)


def on_knowledge_base(settings: Settings, act: Callable[[sessionmaker[Session]], int]) -> int:
    """Run one command's ``act`` against the configured database; exit status 2, with the reason on stderr, when
    the database cannot be used (unreachable, or not migrated)."""
    engine = make_engine(settings)
    try:
        return act(make_session_factory(engine))
    except SQLAlchemyError as exc:
        print(f"kefu: the knowledge base's database cannot be used ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:200]}); has `kefu migrate` been run?", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
