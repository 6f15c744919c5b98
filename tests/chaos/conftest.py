"""The chaos suite: faults and attacks injected into a real stack, each test checking its promise from the database.

The integration fixtures (real Redis, PostgreSQL, Celery worker, llama.cpp) are shared with tests/integration.
"""

from tests.integration.conftest import stack  # noqa: F401  (a pytest fixture, used by name)
