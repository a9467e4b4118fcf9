"""An out-of-memory error as a post-mortem, with real TensorFlow, JAX and PyTorch on the CPU.

A Keras model whose second layer would return 4 TiB at batch 2**20 runs out of memory in
``fit`` for real: torch's CPU allocator and XLA's refuse the request, TensorFlow's too (eager:
TensorFlow's and XLA's compiled steps abort the process on the CPU when an allocation this
size fails, so those steps run eagerly here; the GPU tests run them compiled). The report must
name the layer, the request and a next step, say nothing that contradicts it, and the next cell
must train the same model in the same kernel.
"""

import pytest

from kmem_magic.sizes import TiB

MODEL = """
import numpy as np, keras
model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="narrow"),
                          keras.layers.Dense(2**20, activation="relu", name="wide"),
                          keras.layers.Dense(1, name="head")], name="m")
model.compile("adam", "mse", run_eagerly=keras.config.backend() != "torch")
x = np.zeros((2**20, 8), "float32"); y = np.zeros((2**20, 1), "float32")
"""
OOM = "%%gpumem\nmodel.fit(x, y, batch_size=2**20, epochs=1, verbose=0)"
NEXT = "%%gpumem\nmodel.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)"

BACKENDS = ["torch", "jax", pytest.param("tensorflow", marks=pytest.mark.tensorflow)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_oom_in_fit_names_the_layer_the_request_and_the_next_cell_trains(fresh, backend):
    result = fresh(f"""
        from kmem_magic.record import CellRecord
        from kmem_magic.show import html
        ip.run_line_magic("load_ext", "kmem_magic")
        cell({MODEL!r})
        r = cell({OOM!r})
        RESULT["failed"] = not r.success
        record = last()
        RESULT["kind"] = record.error_kind
        RESULT["pm"] = dataclasses.asdict(record.postmortem)
        RESULT["advice"] = advice()
        RESULT["plan"] = [p.name for p in record.step_plan.parts]
        RESULT["html"] = html.static(record)
        RESULT["json_same"] = CellRecord.from_json(record.to_json()).postmortem == \\
            record.postmortem and CellRecord.from_json(record.to_json()).step_plan == \\
            record.step_plan
        r = cell({NEXT!r})
        RESULT["next_ok"] = r.success and last().error_kind is None
    """, env={"KERAS_BACKEND": backend})
    pm, advice = result["pm"], result["advice"]
    assert result["failed"] and result["kind"] == "oom"
    assert pm["request_bytes"] == 4 * TiB, "the 2**20 x 2**20 float32 output that failed"
    assert (pm["layer"], pm["how"]) == ("wide", "traceback"), pm["where"]
    assert pm["where"] == "layer 'wide' (Dense, output (None, 1048576))"
    assert pm["batch_size"] == 2**20
    assert pm["in_use_bytes"] and pm["in_use_after_bytes"], "host RSS before and after release"
    # one coherent suggestion: the post-mortem's, and no rule beside it contradicts it
    assert [s["rule"] for s in advice] == ["out-of-memory"], advice
    assert advice[0]["title"] == f"Out of memory in {pm['where']}"
    assert advice[0]["evidence"].startswith("the request that failed: 4.00 TiB")
    # the next step is a batch size from the planning model, said to be an estimate
    fits = pm["batch_that_fits"]
    assert fits and 1 <= fits < 2**20 and f"batch_size={fits}" in advice[0]["code"]
    assert "planning estimate" in advice[0]["code"] and "find_batch_size(m, x, y)" in \
        advice[0]["code"]
    # the panel's fallback shows the post-mortem and where the step's peak goes
    assert "Out of memory: post-mortem" in result["html"] and "wide" in result["html"]
    assert "Where the step&#x27;s peak goes" in result["html"] or \
        "Where the step's peak goes" in result["html"]
    assert "wide" in result["plan"] and "weights" in result["plan"]
    assert result["json_same"], "a saved record keeps its post-mortem and plan"
    assert result["next_ok"], "the same model trains in the next cell, no restart"


def test_keras_jax_loses_a_models_weights_after_a_failed_first_step_and_kmem_gives_them_back(
        fresh):
    """Keras' jax trainer takes the weights out of the variables for the step and puts them
    back only after a step that succeeded: without kmem the model cannot train again."""
    result = fresh(f"""
        cell({MODEL!r})
        r = cell("model.fit(x, y, batch_size=2**20, epochs=1, verbose=0)")
        RESULT["bare_failed"] = not r.success
        r = cell("model.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)")
        RESULT["bare_next"] = r.success
        RESULT["bare_error"] = repr(r.error_in_exec)
        cell({MODEL!r})
        ip.run_line_magic("load_ext", "kmem_magic")
        cell({OOM!r})
        RESULT["note"] = last().postmortem.note
        r = cell({NEXT!r})
        RESULT["kmem_next"] = r.success
    """, env={"KERAS_BACKEND": "jax"})
    assert result["bare_failed"] and not result["bare_next"], result["bare_error"]
    assert "kmem put them back" in result["note"] and "'m'" in result["note"]
    assert result["kmem_next"]


SMALL = """
import numpy as np, keras
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512, activation="relu",
                          name="hidden"), keras.layers.Dense(10, name="logits")])
model.compile("adam", "mse")
x = np.zeros((1024, 64), "float32"); y = np.zeros((1024, 10), "float32")
"""


def test_a_fit_cell_shows_where_its_step_peak_goes_from_the_planning_model(fresh):
    result = fresh(f"""
        from kmem_magic.show import plot
        ip.run_line_magic("load_ext", "kmem_magic")
        cell({SMALL!r})
        cell("%%gpumem\\nmodel.fit(x, y, batch_size=128, epochs=1, verbose=0)")
        plan = last().step_plan
        RESULT["plan"] = dataclasses.asdict(plan)
        RESULT["estimate"] = kmem_magic.estimate(ip.user_ns["model"], 128).total_bytes
        from kmem_magic.show.text import summary
        RESULT["text"] = summary(last())
        import io
        from matplotlib.image import imread
        with_plan = imread(io.BytesIO(plot.png(last())))
        without = imread(io.BytesIO(plot.png(dataclasses.replace(last(), step_plan=None))))
        RESULT["heights"] = [with_plan.shape[0], without.shape[0]]
        cell("%%gpumem\\nz = x.sum()")
        RESULT["no_fit_plan"] = last().step_plan is None
        cell("bs = 96")
        cell("%%gpumem\\nmodel.fit(x, y, batch_size=bs, validation_batch_size=8, "
             "validation_split=0.1, epochs=1, verbose=0)")
        RESULT["named_batch"] = last().step_plan.batch_size
    """, env={"KERAS_BACKEND": "jax"})
    plan = result["plan"]
    assert (plan["batch_size"], plan["predicted_bytes"]) == (128, result["estimate"])
    names = [p["name"] for p in plan["parts"]]
    assert "hidden" in names and "weights" in names and "optimizer slots" in names
    sizes = [p["bytes"] for p in plan["parts"]]
    assert sizes == sorted(sizes, reverse=True), "largest first"
    assert "where a training step's peak goes (planning estimate" in result["text"]
    assert "measured peak" in result["text"]
    assert result["heights"][0] > result["heights"][1], "the PNG carries the bars"
    assert result["no_fit_plan"], "a cell that trains nothing gets no plan"
    assert result["named_batch"] == 96, "batch_size=bs read from the namespace, not the " \
        "validation batch size"
