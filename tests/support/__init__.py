"""Small generic helpers for tests against real servers: ``from tests.support import kafka``."""
