"""The gRPC inference request serialized straight from the tensor (consumer/inference/wire.py).

The unit tests hold the bytes to what ``tritonclient.grpc`` itself builds; the integration tests
send them to the real Triton: the same vectors as ``tritonclient``'s own client, a refused input
still classified as refused, a server that is down as unavailable.
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2

from consumer.inference import (
    InferenceRejectedError,
    InferenceUnavailableError,
    ModelSpec,
    TritonInference,
    read_model_spec,
)
from consumer.inference.client import TritonEndpoint
from consumer.inference.wire import MODEL_INFER_PATH, RequestEncoder
from devstack import free_port
from schemas import preprocessing as contract

SIDE = contract.CROP_PX


def _encoder() -> RequestEncoder:
    return RequestEncoder(
        model="image_embedder", version="2", input_name="images", datatype="FP32", output="emb"
    )


def _tritonclient_request(tensor: np.ndarray) -> service_pb2.ModelInferRequest:
    """The message ``tritonclient.grpc.InferenceServerClient.infer`` sends for ``tensor``: built
    by the very function its ``infer`` calls."""
    from tritonclient.grpc._utils import _get_inference_request

    inp = tc.InferInput("images", list(tensor.shape), "FP32")
    inp.set_data_from_numpy(tensor)
    request: service_pb2.ModelInferRequest = _get_inference_request(
        model_name="image_embedder",
        inputs=[inp],
        model_version="2",
        request_id="",
        outputs=[tc.InferRequestedOutput("emb")],
        sequence_id=0,
        sequence_start=False,
        sequence_end=False,
        priority=0,
        timeout=None,
        parameters=None,
    )
    return request


@pytest.mark.parametrize("count", [1, 3, 16])
def test_the_request_is_the_message_tritonclient_sends(count: int) -> None:
    rng = np.random.default_rng(count)
    tensor = rng.standard_normal((count, SIDE, SIDE, 3)).astype(np.float32)
    encoder = _encoder()
    for _ in range(2):  # the second time from the cached header
        sent = service_pb2.ModelInferRequest.FromString(encoder.encode(tensor).request)
        assert sent == _tritonclient_request(tensor)
        payload = np.frombuffer(sent.raw_input_contents[0], np.float32)
        np.testing.assert_array_equal(payload.reshape(tensor.shape), tensor)


def test_shapes_share_nothing_but_the_model() -> None:
    encoder = _encoder()
    small = np.zeros((2, SIDE, SIDE, 3), np.float32)
    large = np.ones((5, SIDE, SIDE, 3), np.float32)
    first = service_pb2.ModelInferRequest.FromString(encoder.encode(large).request)
    second = service_pb2.ModelInferRequest.FromString(encoder.encode(small).request)
    assert list(first.inputs[0].shape) == [5, SIDE, SIDE, 3]
    assert list(second.inputs[0].shape) == [2, SIDE, SIDE, 3]
    assert len(second.raw_input_contents[0]) == small.nbytes


def test_parts_are_sent_as_one_tensor_and_read_back_without_a_copy() -> None:
    rng = np.random.default_rng(3)
    whole = rng.standard_normal((7, SIDE, SIDE, 3)).astype(np.float32)
    encoder = _encoder()
    joined = encoder.encode_parts([whole[:3], whole[3:4], whole[4:]])
    assert joined.request == encoder.encode(whole).request
    assert len(joined) == 7 and joined.shape == whole.shape
    view = joined.array()
    np.testing.assert_array_equal(view, whole)
    assert np.shares_memory(view, np.frombuffer(joined.request, np.uint8))
    assert not view.flags.writeable
    alone = joined.one(5)
    assert alone.request == encoder.encode(whole[5:6]).request


def test_parts_of_another_type_or_shape_are_refused() -> None:
    encoder = _encoder()
    with pytest.raises(ValueError, match="float32 of one image shape"):
        encoder.encode_parts([np.zeros((1, SIDE, SIDE, 3), np.float64)])
    with pytest.raises(ValueError, match="float32 of one image shape"):
        encoder.encode_parts(
            [np.zeros((1, SIDE, SIDE, 3), np.float32), np.zeros((1, 8, 8, 3), np.float32)]
        )


def test_a_tensor_that_is_not_contiguous_is_refused() -> None:
    tensor = np.zeros((4, SIDE, SIDE, 3), np.float32)[::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        _encoder().encode(tensor)


def test_the_method_is_tritons_model_infer() -> None:
    assert MODEL_INFER_PATH == "/inference.GRPCInferenceService/ModelInfer"


@pytest.mark.integration
def test_real_triton_returns_what_tritonclient_gets(triton_grpc_url: str) -> None:
    endpoint = TritonEndpoint("grpc", triton_grpc_url.removeprefix("grpc://"), timeout_s=30)
    spec = read_model_spec(endpoint, contract.MODEL_NAME, "", contract.EMBEDDING_OUTPUT)
    tensor = np.random.default_rng(7).uniform(-2, 2, (3, SIDE, SIDE, 3)).astype(np.float32)
    triton = TritonInference(endpoint, spec)
    try:
        ours = triton.infer(tensor)
    finally:
        triton.close()
    client = tc.InferenceServerClient(endpoint.address)
    try:
        inp = tc.InferInput(spec.input_name, list(tensor.shape), "FP32")
        inp.set_data_from_numpy(tensor)
        result = client.infer(
            spec.name,
            [inp],
            model_version=spec.version,
            outputs=[tc.InferRequestedOutput(spec.output)],
        )
    finally:
        client.close()
    theirs = result.as_numpy(spec.output)
    assert ours.shape == (3, spec.dim)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.integration
def test_real_triton_refuses_a_wrong_shape_as_rejected(triton_grpc_url: str) -> None:
    endpoint = TritonEndpoint("grpc", triton_grpc_url.removeprefix("grpc://"), timeout_s=30)
    spec = read_model_spec(endpoint, contract.MODEL_NAME, "", contract.EMBEDDING_OUTPUT)
    triton = TritonInference(endpoint, spec)
    try:
        with pytest.raises(InferenceRejectedError, match="INVALID_ARGUMENT"):
            triton.infer(np.zeros((1, 10, 10, 3), np.float32))
    finally:
        triton.close()


def test_a_server_that_is_down_is_unavailable() -> None:
    endpoint = TritonEndpoint("grpc", f"127.0.0.1:{free_port()}", timeout_s=2)
    spec = ModelSpec(
        name=contract.MODEL_NAME,
        version="1",
        input_name="images",
        input_datatype="FP32",
        output=contract.EMBEDDING_OUTPUT,
        dim=8,
        max_batch_size=16,
        platform="python",
    )
    triton = TritonInference(endpoint, spec)
    try:
        with pytest.raises(InferenceUnavailableError, match="UNAVAILABLE"):
            triton.infer(np.zeros((1, SIDE, SIDE, 3), np.float32))
    finally:
        triton.close()
