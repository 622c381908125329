"""Triton client per worker thread, metadata validation and classified errors.

A ``tritonclient.http`` client (geventhttpclient) made on one thread raises greenlet's
"Cannot switch to a different thread" when used on another, so every worker thread builds and keeps
its own client in a ``threading.local``; gRPC is the default protocol.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from consumer.inference.batch import TensorBatch, pack_arrays
from consumer.inference.exceptions import (
    InferenceRejectedError,
    InferenceTLSError,
    InferenceUnavailableError,
    ModelMismatchError,
)
from schemas import preprocessing as contract

if TYPE_CHECKING:
    from consumer.inference.wire import EncodedRequest, RequestEncoder

#: How long one readiness probe may wait for Triton.
READINESS_TIMEOUT_S = 2.0

_REJECT_STATUSES = {"StatusCode.INVALID_ARGUMENT", "400", "StatusCode.OUT_OF_RANGE"}

_CLIENT_CERTIFICATE = (
    "set triton_ssl_certificate_chain and triton_ssl_private_key to a client certificate the "
    "server's CA signed"
)
#: (text in the gRPC or Python ssl error, the cause named), first match wins.
_TLS_CAUSES: tuple[tuple[str, str], ...] = (
    (
        "certificate_verify_failed",
        "the server's certificate is not trusted (triton_ssl_root_certificates must name the CA "
        "that signed it)",
    ),
    ("not in peer certificate", "the server's certificate does not name this host"),
    ("hostname mismatch", "the server's certificate does not name this host"),
    ("wrong_version_number", "the server does not speak TLS on this port (use grpc:// or http://)"),
    ("certificate_required", f"the server requires a client certificate: {_CLIENT_CERTIFICATE}"),
    ("alert_bad_certificate", f"the server refused the client certificate: {_CLIENT_CERTIFICATE}"),
    ("alert_unknown_ca", f"the server refused the client certificate: {_CLIENT_CERTIFICATE}"),
    ("handshake failed", "the TLS handshake failed"),
)


@dataclass(frozen=True)
class ModelSpec:
    """What the consumer learned from Triton's metadata about the model it calls."""

    name: str
    version: str
    input_name: str
    input_datatype: str
    output: str
    dim: int
    max_batch_size: int
    platform: str


@dataclass(frozen=True)
class TritonEndpoint:
    """Where and how to reach Triton."""

    protocol: Literal["grpc", "http"]
    address: str  # host:port
    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    timeout_s: float = 30.0


def _new_client(endpoint: TritonEndpoint) -> Any:
    if endpoint.protocol == "grpc":
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(
            endpoint.address,
            ssl=endpoint.ssl,
            root_certificates=endpoint.root_certificates,
            private_key=endpoint.private_key,
            certificate_chain=endpoint.certificate_chain,
        )
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(
        endpoint.address,
        ssl=endpoint.ssl,
        ssl_context_factory=_ssl_context_factory(endpoint) if endpoint.ssl else None,
        connection_timeout=endpoint.timeout_s,
        network_timeout=endpoint.timeout_s,
    )


def _ssl_context_factory(endpoint: TritonEndpoint) -> Callable[[], Any]:
    """TLS for the HTTP client with the configured CA (and client certificate for mutual TLS);
    without this the HTTP client would trust only the system's CAs, whatever the settings say.
    Hostname verification stays on."""

    def factory(**_ignored: Any) -> Any:  # geventhttpclient offers its own cafile: ours wins
        import gevent.ssl

        context = gevent.ssl.create_default_context(cafile=endpoint.root_certificates)
        if endpoint.certificate_chain:
            context.load_cert_chain(endpoint.certificate_chain, endpoint.private_key)
        return context

    return factory


def _tls_cause(text: str, ssl: bool, client_certificate: bool) -> str | None:
    """The TLS failure ``text`` (an error message) names, if any."""
    lowered = text.lower()
    for needle, cause in _TLS_CAUSES:
        if needle in lowered:
            return cause
    if ssl and "socket closed" in lowered:  # gRPC's words for a handshake the server ended
        if client_certificate:
            return (
                "the server closed the TLS connection: it refused the client certificate "
                "(is it signed by the CA the server trusts for clients?)"
            )
        return (
            "the server closed the TLS connection: it requires a client certificate (mutual "
            f"TLS): {_CLIENT_CERTIFICATE}"
        )
    return None


def _classify(exc: Exception, endpoint: TritonEndpoint | None = None) -> Exception:
    """Map a client exception to retry (unavailable), dead-letter (rejected) or, at start-up,
    fatal (a TLS failure with ``endpoint``)."""
    if endpoint is not None:
        cause = _tls_cause(str(exc), endpoint.ssl, bool(endpoint.certificate_chain))
        if cause is not None:
            return InferenceTLSError(f"TLS failed: {cause}")
    status = None
    status_fn = getattr(exc, "status", None)
    if callable(status_fn):
        try:
            status = status_fn()
        except Exception:  # pragma: no cover - defensive: exotic exception objects
            status = None
    if status is not None and str(status) in _REJECT_STATUSES:
        return InferenceRejectedError(str(exc))
    return InferenceUnavailableError(f"{type(exc).__name__}: {exc}")


class TritonInference:
    """Calls one model's output; each thread that calls ``infer`` gets its own client."""

    def __init__(self, endpoint: TritonEndpoint, spec: ModelSpec) -> None:
        self.endpoint = endpoint
        self.spec = spec
        self._local = threading.local()
        self._clients: list[Any] = []
        self._probe_client: Any = None
        self._request_encoder: RequestEncoder | None = None
        self._lock = threading.Lock()

    def _client(self) -> Any:
        """This thread's client: a ``GrpcInferCall`` over gRPC, a ``tritonclient.http`` client
        over HTTP."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._new_thread_client()
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _new_thread_client(self) -> Any:
        if self.endpoint.protocol != "grpc":
            return _new_client(self.endpoint)
        from consumer.inference.wire import GrpcInferCall, open_channel

        ep = self.endpoint
        channel = open_channel(
            ep.address,
            ssl=ep.ssl,
            root_certificates=ep.root_certificates,
            private_key=ep.private_key,
            certificate_chain=ep.certificate_chain,
        )
        return GrpcInferCall(channel, self.spec.output)

    def _encoder(self) -> RequestEncoder:
        with self._lock:
            if self._request_encoder is None:
                from consumer.inference.wire import RequestEncoder

                spec = self.spec
                self._request_encoder = RequestEncoder(
                    model=spec.name,
                    version=spec.version,
                    input_name=spec.input_name,
                    datatype=spec.input_datatype,
                    output=spec.output,
                )
            return self._request_encoder

    def pack(self, parts: Sequence[np.ndarray]) -> TensorBatch:
        """``parts`` (float32 images along the first axis, e.g. views of the JAX step's
        buffers) copied once into what the request is sent from: over gRPC the request's own
        bytes, over HTTP one array. Main thread; the result may go to any thread."""
        if self.endpoint.protocol == "grpc":
            return self._encoder().encode_parts(
                [np.ascontiguousarray(part, dtype=np.float32) for part in parts]
            )
        return pack_arrays([part.astype(np.float32, copy=False) for part in parts])

    def infer(self, batch: np.ndarray | TensorBatch) -> np.ndarray:
        """Run ``[n, 224, 224, 3]`` float32 through the model; returns ``[n, dim]`` float32."""
        client = self._client()
        count = len(batch)
        try:
            if self.endpoint.protocol == "grpc":
                vectors = client.infer(self._encoded(batch), timeout_s=self.endpoint.timeout_s)
            else:
                data = batch if isinstance(batch, np.ndarray) else batch.array()
                vectors = self._infer_http(client, np.ascontiguousarray(data, dtype=np.float32))
        except Exception as exc:
            raise _classify(exc) from exc
        if vectors is None or vectors.shape[0] != count:
            raise InferenceRejectedError(
                f"model returned {None if vectors is None else vectors.shape} for {count}"
            )
        rows: np.ndarray = vectors.reshape(count, -1).astype(np.float32, copy=False)
        return rows

    def _encoded(self, batch: np.ndarray | TensorBatch) -> EncodedRequest:
        from consumer.inference.wire import EncodedRequest

        if isinstance(batch, EncodedRequest):
            return batch
        data = batch if isinstance(batch, np.ndarray) else batch.array()
        return self._encoder().encode(np.ascontiguousarray(data, dtype=np.float32))

    def _infer_http(self, client: Any, data: np.ndarray) -> np.ndarray | None:
        import tritonclient.http as tc

        inp = tc.InferInput(self.spec.input_name, list(data.shape), self.spec.input_datatype)
        inp.set_data_from_numpy(data, binary_data=True)
        out = tc.InferRequestedOutput(self.spec.output, binary_data=True)
        result = client.infer(
            self.spec.name, inputs=[inp], outputs=[out], model_version=self.spec.version
        )
        vectors: np.ndarray | None = result.as_numpy(self.spec.output)
        return vectors

    def is_ready(self) -> bool:
        """Whether Triton reports the model ready, within ``READINESS_TIMEOUT_S`` (``/readyz``).

        Probes come from a new thread each (the health server's), so they must not take a
        per-thread inference client: gRPC probes share one client (its channel is thread-safe);
        an HTTP client is bound to the thread that made it (gevent), so each HTTP probe opens a
        short-lived one and closes it.
        """
        try:
            if self.endpoint.protocol == "grpc":
                return bool(
                    self._readiness_client().is_model_ready(
                        self.spec.name, self.spec.version, client_timeout=READINESS_TIMEOUT_S
                    )
                )
            client = _new_client(replace(self.endpoint, timeout_s=READINESS_TIMEOUT_S))
            try:
                return bool(client.is_model_ready(self.spec.name, self.spec.version))
            finally:
                client.close()
        except Exception:
            return False

    def _readiness_client(self) -> Any:
        with self._lock:
            if self._probe_client is None:
                self._probe_client = _new_client(self.endpoint)
                self._clients.append(self._probe_client)
            return self._probe_client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
            self._probe_client = None
        for client in clients:
            with contextlib.suppress(Exception):  # closing is best effort
                client.close()


def read_model_spec(endpoint: TritonEndpoint, model: str, version: str, output: str) -> ModelSpec:
    """Read and validate the model's metadata: image input of the contract's shape, 2-D output.

    A TLS failure (an untrusted certificate, a client certificate required or refused, an
    unreadable TLS file) raises :class:`InferenceTLSError`, which names the cause."""
    for path in (endpoint.root_certificates, endpoint.private_key, endpoint.certificate_chain):
        if path:  # read before the client does: its own failure leaves noise on stderr
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise InferenceTLSError(
                    f"cannot read a Triton TLS file: {exc.strerror or exc}: {path}"
                ) from exc
    client = _new_client(endpoint)
    try:
        try:
            if not client.is_model_ready(model, version):
                raise InferenceUnavailableError(f"Triton model {model!r} is not ready")
            meta = client.get_model_metadata(model, version)
            config = client.get_model_config(model, version)
        except InferenceUnavailableError:
            raise
        except Exception as exc:
            err = _classify(exc, endpoint)
            if isinstance(err, InferenceRejectedError):
                raise ModelMismatchError(f"Triton has no model {model!r} ({exc})") from exc
            raise err from exc
    finally:
        with contextlib.suppress(Exception):
            client.close()
    if endpoint.protocol == "grpc":
        from google.protobuf.json_format import MessageToDict

        meta = MessageToDict(meta, preserving_proto_field_name=True)
        config = MessageToDict(config, preserving_proto_field_name=True).get("config", {})
    inputs = meta.get("inputs", [])
    if len(inputs) != 1:
        raise ModelMismatchError(f"model {model!r} must take exactly one input, has {len(inputs)}")
    tensor = inputs[0]
    shape = [int(d) for d in tensor.get("shape", [])]
    want = [-1, contract.CROP_PX, contract.CROP_PX, 3]
    if shape != want or tensor.get("datatype") != "FP32":
        raise ModelMismatchError(
            f"model {model!r} input {tensor.get('name')!r} is {tensor.get('datatype')} {shape}; "
            f"the consumer sends FP32 {want} ({contract.preprocessing_id()})"
        )
    outputs = {o["name"]: o for o in meta.get("outputs", [])}
    if output not in outputs:
        raise ModelMismatchError(
            f"model {model!r} has no output {output!r}; it has {sorted(outputs)}"
        )
    out_shape = [int(d) for d in outputs[output].get("shape", [])]
    if len(out_shape) != 2 or out_shape[1] <= 0 or outputs[output].get("datatype") != "FP32":
        raise ModelMismatchError(
            f"output {output!r} must be FP32 [-1, D], is {outputs[output].get('datatype')} "
            f"{out_shape}"
        )
    versions = meta.get("versions") or [version or "1"]
    return ModelSpec(
        name=model,
        version=version or str(max(versions, key=lambda v: int(v) if v.isdigit() else 0)),
        input_name=tensor["name"],
        input_datatype="FP32",
        output=output,
        dim=out_shape[1],
        max_batch_size=int(config.get("max_batch_size", 0) or 0),
        platform=str(meta.get("platform", "")),
    )
