"""The reference model through a running Triton server (gRPC), as the consumer sees it."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
from skimage import data as photos

from schemas import preprocessing as contract

pytestmark = pytest.mark.integration

Preprocess = Callable[[np.ndarray], np.ndarray]
TABBY_TO_EGYPTIAN_CAT = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian
ESPRESSO = 967


def _client(url: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(url.removeprefix("grpc://"))


@pytest.fixture(scope="module")
def client(triton_grpc_url: str) -> grpcclient.InferenceServerClient:
    return _client(triton_grpc_url)


def infer(
    client: grpcclient.InferenceServerClient, batch: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One request: ``batch`` [N, 224, 224, 3] -> (EMBEDDING, LOGITS)."""
    image = grpcclient.InferInput(contract.INPUT_NAME, list(batch.shape), "FP32")
    image.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
    result = client.infer(
        contract.MODEL_NAME,
        [image],
        model_version=contract.MODEL_VERSION,
        outputs=[
            grpcclient.InferRequestedOutput(contract.EMBEDDING_OUTPUT),
            grpcclient.InferRequestedOutput(contract.LOGITS_OUTPUT),
        ],
    )
    return result.as_numpy(contract.EMBEDDING_OUTPUT), result.as_numpy(contract.LOGITS_OUTPUT)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def gallery(preprocess: Preprocess) -> dict[str, np.ndarray]:
    """Preprocessed photos bundled with scikit-image, plus shifted crops of two of them."""
    chelsea, coffee, astronaut = photos.chelsea(), photos.coffee(), photos.astronaut()
    return {
        "chelsea": preprocess(chelsea),
        "coffee": preprocess(coffee),
        "astronaut": preprocess(astronaut),
        "chelsea-shifted": preprocess(chelsea[12:, 16:]),
        "coffee-shifted": preprocess(coffee[:-20, 10:]),
    }


def test_model_is_ready_with_the_contract_metadata(
    client: grpcclient.InferenceServerClient,
) -> None:
    assert client.is_model_ready(contract.MODEL_NAME, contract.MODEL_VERSION)
    meta = client.get_model_metadata(contract.MODEL_NAME, contract.MODEL_VERSION, as_json=True)
    crop = contract.CROP_PX

    assert contract.MODEL_VERSION in meta["versions"]
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"]] == [
        (contract.INPUT_NAME, "FP32", [-1, crop, crop, 3])
    ]
    outputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta["outputs"]}
    assert outputs == {
        contract.EMBEDDING_OUTPUT: ("FP32", [-1, contract.EMBEDDING_DIM]),
        contract.LOGITS_OUTPUT: ("FP32", [-1, contract.NUM_CLASSES]),
    }


def test_model_config_batches_dynamically(client: grpcclient.InferenceServerClient) -> None:
    config = client.get_model_config(contract.MODEL_NAME, contract.MODEL_VERSION, as_json=True)[
        "config"
    ]

    assert int(config["max_batch_size"]) == contract.MAX_BATCH
    assert "dynamic_batching" in config


def test_chelsea_is_a_cat_and_coffee_an_espresso(
    client: grpcclient.InferenceServerClient, gallery: dict[str, np.ndarray]
) -> None:
    embedding, logits = infer(client, np.stack([gallery["chelsea"], gallery["coffee"]]))

    assert embedding.shape == (2, contract.EMBEDDING_DIM) and embedding.dtype == np.float32
    assert logits.shape == (2, contract.NUM_CLASSES) and logits.dtype == np.float32
    assert int(np.argmax(logits[0])) in TABBY_TO_EGYPTIAN_CAT
    assert int(np.argmax(logits[1])) == ESPRESSO


def test_shifted_crop_is_closer_than_another_photo(
    client: grpcclient.InferenceServerClient, gallery: dict[str, np.ndarray]
) -> None:
    names = list(gallery)
    embeddings, _ = infer(client, np.stack([gallery[n] for n in names]))
    e = dict(zip(names, embeddings, strict=True))

    for photo in ("chelsea", "coffee"):
        shifted = cosine(e[photo], e[f"{photo}-shifted"])
        others = [cosine(e[photo], e[o]) for o in ("chelsea", "coffee", "astronaut") if o != photo]
        assert shifted > max(others), (photo, shifted, others)


def test_batch_equals_single_images(
    client: grpcclient.InferenceServerClient, gallery: dict[str, np.ndarray]
) -> None:
    batch = np.stack(list(gallery.values()))  # 5 images: more than one execution chunk

    embeddings, logits = infer(client, batch)
    singles = [infer(client, batch[i : i + 1]) for i in range(len(batch))]

    np.testing.assert_allclose(embeddings, np.concatenate([e for e, _ in singles]), atol=1e-4)
    np.testing.assert_allclose(logits, np.concatenate([lg for _, lg in singles]), atol=1e-4)


def test_concurrent_requests_batched_by_triton_match_single_results(
    triton_grpc_url: str, gallery: dict[str, np.ndarray]
) -> None:
    """Requests from several threads (one client each) may be merged by the dynamic batcher;
    each must still get its own image's result."""
    images = list(gallery.values()) * 2
    reference = infer(_client(triton_grpc_url), np.stack(images))[0]

    def one(i: int) -> np.ndarray:
        return infer(_client(triton_grpc_url), images[i][None])[0][0]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, range(len(images))))

    np.testing.assert_allclose(np.stack(results), reference, atol=1e-4)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_server_and_triton(start_triton: Callable[..., Any], sig: int) -> None:
    """A server of this test's own: one signal stops it, with Triton and the backend stub."""
    server = start_triton()
    children = psutil.Process(server.pid).children(recursive=True)
    assert any("tritonserver" in c.name() for c in children)

    os.kill(server.pid, sig)
    deadline = time.monotonic() + 120  # a bound against hanging, not a speed requirement
    while server.running() and time.monotonic() < deadline:
        time.sleep(0.2)

    assert not server.running()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert alive == [], [p.pid for p in alive]
    log = server.log_file.read_text(errors="replace")
    # The model answers "ready" a moment before PyTriton's run() returns: a signal in between is
    # taken as one during start-up, and the line says so. Either way it names the signal.
    assert re.search(
        rf"signal {signal.Signals(sig).name} received( during start-up)?, stopping", log
    )
    assert "Traceback" not in log
