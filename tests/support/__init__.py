"""Small generic helpers for tests against the real servers (``from support import kafka``)."""
