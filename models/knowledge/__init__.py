"""The business's own knowledge: FAQ entries with similar questions, documents and their passages.

Pure modules (values, parsing, retrieval) plus :mod:`models.knowledge.store` (the database). Retrieval
indexes live in memory, built once per process and rebuilt when their source's fingerprint changes.
"""
