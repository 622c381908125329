"""Benchmarks of the image-embedder pipeline (``python -m bench``, ``make bench``).

Not part of the service: it starts its own servers through ``devstack`` and measures each stage
alone, a naive sequential consumer and the real consumer end to end. See docs/performance.md.
"""
