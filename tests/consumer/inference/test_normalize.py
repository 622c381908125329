"""NumPy L2 normalization and its validity checks."""

from __future__ import annotations

import threading

import numpy as np

from consumer.inference import l2_normalize


def test_known_vectors() -> None:
    unit, valid = l2_normalize(np.array([[3.0, 4.0], [1.0, 0.0]]))
    np.testing.assert_allclose(unit, [[0.6, 0.8], [1.0, 0.0]], rtol=1e-6)
    assert valid.tolist() == [True, True]


def test_zero_nan_and_inf_are_rejected_and_zeroed() -> None:
    unit, valid = l2_normalize(np.array([[0.0, 0.0], [np.nan, 1.0], [np.inf, 1.0], [2.0, 0.0]]))
    assert valid.tolist() == [False, False, False, True]
    np.testing.assert_array_equal(unit[:3], np.zeros((3, 2)))
    np.testing.assert_allclose(unit[3], [1.0, 0.0])


def test_correct_from_many_threads_at_once() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(64, 1280)).astype(np.float32) for _ in range(16)]
    expected = [b / np.linalg.norm(b.astype(np.float64), axis=1, keepdims=True) for b in batches]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(20):
            unit, valid = l2_normalize(batches[i])
            assert valid.all()
            results[i] = unit

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(16):
        np.testing.assert_allclose(results[i], expected[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(results[i], axis=1), 1.0, rtol=1e-5)
