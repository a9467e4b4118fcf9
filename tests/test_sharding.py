"""Before training under a keras.distribution layout: what each device holds, and the weights a
layout rule that matched nothing left whole on every device. Jax on four CPU devices in a fresh
process (``--xla_force_host_platform_device_count=4``); the figures are checked against the
shards jax itself placed on the first device."""

import pytest

pytest.importorskip("jax")

SETUP = """
import keras, kmem_magic
mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"],
                                     keras.distribution.list_devices())

def build(rules):
    layout = keras.distribution.LayoutMap(mesh)
    for rule, axes in rules.items():
        layout[rule] = axes
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch"))
    model = keras.Sequential([keras.Input((8,), dtype="int32"),
                              keras.layers.Embedding(5000, 64), keras.layers.Flatten(),
                              keras.layers.Dense(256), keras.layers.Dense(4)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model

def on_first_device(model):
    import jax

    device = jax.devices()[0]
    return sum(s.data.nbytes for v in model.variables for s in v.value.addressable_shards
               if s.device == device)

typo = build({".*dense.*kernel": (None, "model"), "embeddings_typo": ("model", None)})
check = kmem_magic.sharding(typo, batch_size=64)
RESULT["text"] = str(check)
RESULT["replicated"] = [v.path for v in check.replicated]
RESULT["per_device"] = check.weights_per_device
RESULT["jax_first_device"] = on_first_device(typo)
RESULT["devices"] = check.devices
fixed = build({".*dense.*kernel": (None, "model"), ".*embeddings": ("model", None)})
after = kmem_magic.sharding(fixed)
RESULT["fixed_text"] = str(after)
RESULT["fixed_per_device"] = after.weights_per_device
RESULT["fixed_jax_first_device"] = on_first_device(fixed)
import numpy as np
fixed.fit(np.random.randint(0, 5000, (128, 8)), np.random.randint(0, 4, 128), batch_size=64,
          verbose=0)
RESULT["trained"] = True
keras.distribution.set_distribution(None)
early = keras.Sequential([keras.Input((8,)), keras.layers.Dense(256), keras.layers.Dense(4)])
keras.distribution.set_distribution(keras.distribution.DataParallel())
RESULT["early_text"] = str(kmem_magic.sharding(early))
keras.distribution.set_distribution(None)
try:
    kmem_magic.sharding(fixed)
except ValueError as error:
    RESULT["alone"] = str(error)
"""


def test_a_layout_rule_that_matched_nothing_is_reported_before_fit(fresh):
    result = fresh(SETUP, env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
                               "XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert result["devices"] == 4
    assert result["replicated"][0] == "sequential/embedding/embeddings"
    assert "no layout rule matched its path" in result["text"]
    assert "sequential/embedding/embeddings  1.22 MiB" in result["text"]
    assert result["per_device"] == result["jax_first_device"], "exactly what jax placed"
    assert "per device (planning estimate)" in result["text"]
    # the rule fixed: the table is split over the model axis, and nothing large stays whole
    assert result["fixed_per_device"] == result["fixed_jax_first_device"]
    assert result["fixed_per_device"] < result["per_device"] - 600_000
    assert "replicated" not in result["fixed_text"]
    assert "not laid out" not in result["fixed_text"] + result["text"]
    assert result["trained"]
    assert "no keras.distribution is set" in result["alone"]
    # a model built before the distribution sits on one device, not on the mesh: said so
    assert "4 of 4 variables (13.02 KiB) are not laid out on the mesh: the model was built " \
        "before set_distribution" in result["early_text"]
