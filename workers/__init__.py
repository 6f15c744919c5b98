"""Celery workers: generation (queue ``llm``), delivery and housekeeping (queue ``io``)."""
