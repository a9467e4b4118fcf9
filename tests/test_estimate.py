"""kmem_magic.estimate with real Keras models (TensorFlow on the CPU): the arithmetic of the
breakdown, checked against what Keras itself builds. Its accuracy against real GPU peaks is
a benchmark (benchmarks/estimate_zoo.py, docs/benchmarks.md), not a test."""

import pytest

pytestmark = pytest.mark.tensorflow

keras = pytest.importorskip("keras")
np = pytest.importorskip("numpy")

import kmem_magic  # noqa: E402
from kmem_magic.plan.estimator import rule_of_thumb  # noqa: E402


def mlp(optimizer="adam"):
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def real_slot_bytes(model):
    """What the optimizer really allocates once built, less its scalars."""
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    return sum(int(np.prod(v.shape)) * 4 for v in optimizer.variables if len(v.shape))


@pytest.mark.parametrize("optimizer", [
    keras.optimizers.Adam(), keras.optimizers.Adam(amsgrad=True), keras.optimizers.AdamW(),
    keras.optimizers.SGD(), keras.optimizers.SGD(momentum=0.9), keras.optimizers.RMSprop(),
    keras.optimizers.RMSprop(centered=True, momentum=0.9), keras.optimizers.Adagrad(),
    keras.optimizers.Nadam(), keras.optimizers.Lion(), keras.optimizers.Adafactor(),
], ids=lambda o: type(o).__name__ + ("+" if o.get_config().get("amsgrad")
                                     or o.get_config().get("momentum")
                                     or o.get_config().get("centered") else ""))
def test_optimizer_slots_match_what_keras_builds(optimizer):
    model = mlp(optimizer)
    predicted = kmem_magic.estimate(model, 32).optimizer_bytes
    assert predicted == real_slot_bytes(model)


def test_weights_and_gradients_are_the_models_parameters():
    model = mlp()
    est = kmem_magic.estimate(model, 32)
    assert est.weights_bytes == 4 * model.count_params()
    assert est.gradients_bytes == 4 * sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    model.layers[0].trainable = False
    frozen = kmem_magic.estimate(model, 32)
    assert frozen.weights_bytes == est.weights_bytes
    assert frozen.gradients_bytes == est.gradients_bytes - 4 * (64 * 256 + 256)


def test_batch_dependent_parts_grow_linearly_and_at_predicts_other_sizes():
    model = mlp()
    small, large = kmem_magic.estimate(model, 64), kmem_magic.estimate(model, 256)
    assert large.activations_bytes == 4 * small.activations_bytes
    assert large.weights_bytes == small.weights_bytes
    assert large.optimizer_bytes == small.optimizer_bytes
    assert small.at(256) == large.total_bytes
    # a budget is a limit: the batch that trains under a step's predicted limit is the step's
    assert small.largest_batch(large.limit_bytes) >= 256 > small.largest_batch(small.limit_bytes)
    assert large.total_bytes > small.total_bytes


def test_the_limit_to_set_is_the_peak_plus_the_allocators_reserve_and_the_context_is_apart():
    est = kmem_magic.estimate(mlp(), 128)
    assert est.reserve_bytes > 0 and est.limit_bytes == est.total_bytes + est.reserve_bytes
    assert est.limit_at(128) == est.limit_bytes and est.limit_at(512) > est.limit_bytes
    # the CUDA context is outside every framework limit, but the device must hold it
    assert est.device_bytes == est.limit_bytes + est.context_bytes > est.limit_bytes
    text = str(est)
    for part in ("allocator reserve", "= limit to set", "CUDA context", "outside the limit",
                 "= device memory needed", "workspace"):
        assert part in text
    assert not est.calibrated and "never checked on a GPU" in text  # TensorFlow here


def test_mixed_precision_halves_activations_but_not_weights_or_slots():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x))
    model.compile("adam", "mse")
    full = kmem_magic.estimate(model, 128)
    mixed = kmem_magic.estimate(model, 128, dtype_policy="mixed_float16")
    assert mixed.compute_dtype == "float16" and full.compute_dtype == "float32"
    assert mixed.weights_bytes == full.weights_bytes
    assert mixed.optimizer_bytes == full.optimizer_bytes
    assert mixed.activations_bytes == pytest.approx(full.activations_bytes / 2, rel=0.02)
    assert mixed.total_bytes < full.total_bytes


def test_shared_layers_and_nested_models_are_counted_once_and_opened():
    shared = keras.layers.Dense(128)
    a, b = keras.Input((64,)), keras.Input((64,))
    model = keras.Model([a, b], keras.layers.Add()([shared(a), shared(b)]))
    model.compile("sgd", "mse")
    est = kmem_magic.estimate(model, 16)
    assert est.gradients_bytes == 4 * (64 * 128 + 128)  # one gradient for the shared weights
    inner = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512, activation="relu")])
    outer_in = keras.Input((64,))
    outer = keras.Model(outer_in, keras.layers.Dense(1)(inner(outer_in)))
    outer.compile("sgd", "mse")
    nested = kmem_magic.estimate(outer, 100)
    assert nested.weights_bytes == 4 * outer.count_params()
    # the inner Dense(512)'s output is kept for the backward pass: at least 100 x 512 floats
    assert nested.activations_bytes >= 100 * 512 * 4
    assert any("dense" in name for name, _ in nested.layers)


def test_estimate_runs_nothing_and_changes_nothing():
    model = mlp()
    before = [w.copy() for w in model.get_weights()]
    est = kmem_magic.estimate(model, 512)
    assert not model.optimizer.built  # no step ran, no optimizer state was made
    assert all((a == b).all() for a, b in zip(before, model.get_weights()))
    text = str(est)
    assert text.startswith("estimate for batch 512 (tensorflow, float32): --limit ")
    for part in ("weights", "gradients", "optimizer slots", "activations kept for backward",
                 "largest temporary", "input batch"):
        assert part in text


def test_the_copied_formula_leaves_out_gradients_and_optimizer_state():
    model = mlp()
    est = kmem_magic.estimate(model, 32)
    assert rule_of_thumb(model, 32) < est.weights_bytes + est.gradients_bytes + est.optimizer_bytes


@pytest.mark.parametrize("batch", [0, -3, 2.5, "32", True])
def test_a_bad_batch_size_is_refused_in_one_line(batch):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        kmem_magic.estimate(mlp(), batch)


def test_models_without_a_layer_graph_are_refused_clearly():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(4)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ValueError, match="built Sequential or functional model"):
        kmem_magic.estimate(Net(), 8)
    with pytest.raises(ValueError, match="every dimension but the batch fixed"):
        model = keras.Sequential([keras.Input((None, 8)), keras.layers.Dense(4)])
        kmem_magic.estimate(model, 8)
    with pytest.raises(TypeError, match="needs a Keras model"):
        kmem_magic.estimate("model", 8)
