"""mxnet_byoc.serve.network and the C predict wrapper under it (cpredict) on a tiny model with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serving_models import expected_probabilities, export_indicator_model, indicator_weights

from mxnet_byoc import modeldir
from mxnet_byoc.serve import cpredict, network
from mxnet_byoc.serve.device import CPU


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    loaded = network.load(export_indicator_model(tmp_path_factory.mktemp("logits") / "model"))
    yield loaded
    loaded.close()


def batch(count: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).rand(count, 1, 28, 28).astype(np.float32)


def test_probabilities_are_the_softmax_of_the_scores(model):
    x = batch(5)
    np.testing.assert_allclose(model.predict(x), expected_probabilities(x), atol=1e-6)
    assert model.num_classes == 10 and model.classes == list(range(10)) and model.input_shape == (1, 28, 28)


@pytest.mark.parametrize("count", [1, 7, 8, 9, 31, 32, 33, 127, 128, 129, 1000])
def test_any_batch_size_gives_the_same_answers_as_one_image_at_a_time(model, count):
    x = batch(count, seed=count)
    together = model.predict(x)
    assert together.shape == (count, 10) and together.dtype == np.float32
    alone = np.concatenate([model.predict(x[i : i + 1]) for i in range(count)])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    np.testing.assert_allclose(together, expected_probabilities(x), atol=1e-6)


@pytest.mark.parametrize("head", ["softmax", "SoftmaxOutput"])
def test_networks_ending_in_probabilities_are_not_softmaxed_twice(tmp_path, head):
    loaded = network.load(export_indicator_model(tmp_path / "model", head=head))
    try:
        x = batch(70)
        np.testing.assert_allclose(loaded.predict(x), expected_probabilities(x), atol=1e-6)
    finally:
        loaded.close()


def test_without_metadata_classes_come_from_the_output_width(tmp_path):
    model_dir = export_indicator_model(tmp_path / "model")
    (model_dir / modeldir.METADATA_FILE).unlink()
    loaded = network.load(model_dir)
    try:
        assert loaded.classes == list(range(10)) and loaded.input_shape == (1, 28, 28)
    finally:
        loaded.close()


@pytest.mark.parametrize(
    "x", [np.zeros((2, 1, 28, 28), np.float64), np.zeros((2, 28, 28), np.float32),
          np.asfortranarray(np.zeros((2, 1, 28, 28), np.float32))[:, :, ::2, ::2]],
)
def test_predict_refuses_arrays_it_cannot_pass_to_mxnet_as_they_are(model, x):
    with pytest.raises(ValueError, match="C-contiguous float32"):
        model.predict(x)


def test_a_symbol_that_is_not_json_is_a_model_dir_error(tmp_path):
    model_dir = export_indicator_model(tmp_path / "model")
    (model_dir / modeldir.SYMBOL_FILE).write_text(json.dumps({"nodes": []}))
    with pytest.raises(modeldir.ModelDirError, match="model-symbol.json"):
        network.load(model_dir)


def test_a_predictor_bound_for_one_row_answers_as_one_bound_at_several_sizes(tmp_path):
    model_dir = export_indicator_model(tmp_path / "model")
    symbol_json = cpredict.read(model_dir / modeldir.SYMBOL_FILE)  # raw scores: no softmax added
    row_at_a_time = cpredict.load(model_dir, symbol_json, "data", (1, 28, 28), CPU)
    chunked = cpredict.load(model_dir, symbol_json, "data", (1, 28, 28), CPU, network.BATCH_SIZES)
    try:
        x = batch(169)  # 128 + 32 + 8 + 1
        scores = x.reshape(len(x), -1) @ indicator_weights().T
        assert row_at_a_time.output_shape == chunked.output_shape == (1, 10)
        np.testing.assert_allclose(row_at_a_time.forward(x), scores, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(chunked.forward(x), scores, rtol=1e-5, atol=1e-4)
    finally:
        row_at_a_time.close()
        chunked.close()
    with pytest.raises(cpredict.InferenceError, match="closed"):  # its handles are freed
        chunked.forward(x)


@pytest.mark.parametrize("sizes", [(), (8, 2), (1, 8), (8, 8, 1)])
def test_batch_sizes_are_distinct_largest_first_and_end_in_one(sizes):
    with pytest.raises(ValueError, match="largest first, ending in 1"):
        cpredict.Predictor(b"{}", b"", "data", (1, 28, 28), CPU, sizes)
