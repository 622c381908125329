"""Thread rules, proven end to end: no JAX frame ever runs outside the main thread, and the I/O
threads run nicer than the threads that feed the model."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from consumer.engine import Engine
from consumer.settings import Settings
from tests.consumer.conftest import photo_messages
from tests.support.kafka import create_topic, produce_json
from tests.support.milvus import count_rows

pytestmark = pytest.mark.integration


def _is_jax_code(filename: str) -> bool:
    parts = Path(filename).parts
    return "jax" in parts or "jaxlib" in parts


def test_no_jax_frame_outside_the_main_thread(
    kafka_bootstrap: str,
    milvus_uri: str,
    triton_grpc_url: str,
    photo_dir: Path,
    unique_name: str,
) -> None:
    """A profiling hook on every thread records JAX/jaxlib frames off the main thread: none."""
    messages = photo_messages(photo_dir)[:6]
    create_topic(kafka_bootstrap, unique_name, partitions=2)
    produce_json(kafka_bootstrap, unique_name, messages)

    records: list[tuple[str, str]] = []
    niceness: dict[str, int] = {}
    main = threading.main_thread()

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        thread = threading.current_thread()
        if event == "call" and frame.f_code.co_name in ("_load", "infer_task"):
            niceness[thread.name] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        if event == "call" and thread is not main and _is_jax_code(frame.f_code.co_filename):
            records.append((thread.name, frame.f_code.co_filename))

    # the hook must be able to see a violation: a thread that calls JAX is recorded
    threading.setprofile(hook)
    try:
        import jax.numpy as jnp

        offender = threading.Thread(target=lambda: jnp.zeros(2).block_until_ready(), name="bad")
        offender.start()
        offender.join()
        assert any(name == "bad" for name, _ in records), "the profiling hook saw nothing"
        records.clear()

        settings = Settings(
            topic=unique_name,
            group=unique_name,
            collection=unique_name,
            until_end=True,
            bootstrap_servers=kafka_bootstrap,
            milvus_uri=milvus_uri,
            triton_url=triton_grpc_url,
            file_roots=(photo_dir,),
            metrics_port=None,
        )
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            summary = Engine(settings).run()
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    finally:
        threading.setprofile(None)
        sys.setprofile(None)
    assert summary.ingested == len(messages)
    assert count_rows(milvus_uri, unique_name) == len(messages)
    # the I/O pool decodes from a buffer; the threads that feed Triton must win the CPU
    base = os.getpriority(os.PRIO_PROCESS, 0)
    io = {name: n for name, n in niceness.items() if name.startswith("io_")}
    infer = {name: n for name, n in niceness.items() if name.startswith("infer_")}
    assert io and infer, sorted(niceness)
    if sys.platform.startswith("linux"):
        assert set(io.values()) == {min(19, base + settings.io_nice)}, io
    assert set(infer.values()) == {base}, infer
    assert records == [], f"JAX ran off the main thread: {records[:5]}"
