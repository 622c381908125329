"""A deterministic, seeded simulation of the consumer engine with fakes at its edges.

Never imported by product code. ``python -m tests.simulation --seeds N`` (``make simulate``)
explores seeds in parallel processes; ``python -m tests.simulation --seed S --trace`` replays one.
"""
