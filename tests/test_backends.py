"""Each Keras backend for real, each in a fresh process (Keras reads its backend once).

Invariant 1: kmem never starts a framework itself. Then a real ``model.fit`` under ``%%gpumem``
on every backend that is installed (on the CPU here; the same tests run on the GPU machine).
"""

import os

import pytest

BACKENDS = ["tensorflow", "jax", "torch"]

# How each framework tells, without starting anything, that it has started.
STARTED = {
    "tensorflow": "from tensorflow.python.eager import context\n"
                  "ctx = context.context_safe()\n"
                  "started = ctx is not None and ctx._context_handle is not None",
    "jax": "from jax._src import xla_bridge\nstarted = xla_bridge.backends_are_initialized()",
    "torch": "started = torch.cuda.is_initialized() or bool(lazy_inits)",
}

# A spy at torch's boundary: on a CPU-only build CUDA can never start, so the test also
# fails if kmem so much as asked torch to start it.
TORCH_SPY = """
lazy_inits = []
real_lazy_init = torch.cuda._lazy_init
def spy():
    lazy_inits.append(1)
    return real_lazy_init()
torch.cuda._lazy_init = spy
"""


@pytest.mark.parametrize("framework", BACKENDS)
def test_kmem_never_starts_a_framework(fresh, framework):
    pytest.importorskip(framework)
    result = fresh("\n".join([
        f"import {framework}",
        f"torch = {framework}",
        TORCH_SPY if framework == "torch" else "",
        'ip.run_line_magic("load_ext", "kmem_magic")',
        'r = cell("%%gpumem\\ntotal = sum(range(1000))\\ntotal")',
        'RESULT["value"] = r.result',
        'ip.run_line_magic("gpumem", "status")',
        'cell("%%gpumem --limit 1GiB\\nx = 2")',
        STARTED[framework],
        'RESULT["started"] = bool(started)',
    ]))
    assert result["value"] == 499500
    assert result["started"] is False, f"kmem started {framework}:\n{result['_stdout']}"
    assert f"{framework:<11} imported" in result["_stdout"]


@pytest.mark.parametrize("framework", BACKENDS)
def test_keras_fit_under_gpumem(fresh, framework):
    pytest.importorskip(framework)
    pytest.importorskip("keras")
    result = fresh("""
        ip.run_line_magic("load_ext", "kmem_magic")
        # A notebook's first cell: Keras and its framework are imported while the sampler runs.
        r = cell('''%%gpumem --quiet
        import numpy as np, keras
        x = np.random.rand(512, 32).astype("float32")
        y = np.random.randint(0, 4, 512)
        model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"),
                                  keras.layers.Dense(4)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        ''')
        RESULT["import_error"] = repr(r.error_in_exec) if r.error_in_exec else None
        r = cell('''%%gpumem
        history = model.fit(x, y, batch_size=64, epochs=2, verbose=0)
        len(history.history["loss"])
        ''')
        RESULT["epochs"] = r.result
        RESULT["ok"] = r.success
        from kmem_magic.show.export import timeline_csv
        record = last()
        RESULT["backend"] = record.backend
        RESULT["host_peak"] = record.peak("host").bytes
        RESULT["wall_s"] = record.wall_s
        RESULT["csv_rows"] = len(timeline_csv(record).splitlines())
    """, env={"KERAS_BACKEND": framework})
    assert result["import_error"] is None, "importing Keras under %%gpumem failed"
    assert result["ok"] and result["epochs"] == 2
    assert result["backend"] == framework
    assert result["host_peak"] > 50 * 2**20
    assert result["csv_rows"] >= 3, "at least the start and the end sample, plus a header"
    assert f"keras backend {framework}" in result["_stdout"]


@pytest.mark.tensorflow
def test_tensorflow_started_before_load_is_reported(fresh):
    pytest.importorskip("tensorflow")
    result = fresh("""
        import tensorflow as tf
        tf.constant(1.0)
        ip.run_line_magic("load_ext", "kmem_magic")
    """)
    # No GPU here, so nothing is lost; the line still says what state TensorFlow is in.
    assert "tensorflow  already started, on the CPU only" in result["_stdout"]


def test_error_in_a_keras_cell_fails_it_and_the_next_cell_runs(fresh):
    pytest.importorskip("keras")
    result = fresh("""
        ip.run_line_magic("load_ext", "kmem_magic")
        cell("import keras")
        r = cell("%%gpumem\\nkeras.ops.matmul(keras.ops.ones((2, 3)), keras.ops.ones((4, 5)))")
        RESULT["failed"] = not r.success
        RESULT["error"] = type(r.error_in_exec).__name__
        r = cell("%%gpumem --quiet\\n1 + 1")
        RESULT["next"] = r.result
    """, env={"KERAS_BACKEND": "jax"} if _has("jax") else {})
    # The shape error of whichever framework Keras runs on reaches the user as it is.
    assert result["failed"], "a cell that raised was reported as a success"
    assert result["error"] in {"TypeError", "ValueError", "RuntimeError", "InvalidArgumentError"}
    assert result["next"] == 2


def _has(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_a_module_still_being_imported_is_not_loaded(tmp_path, monkeypatch):
    # What the sampler thread sees while the cell imports a framework: not yet there.
    from kmem_magic.backends import loaded

    (tmp_path / "kmem_slow_import.py").write_text(
        "from kmem_magic.backends import loaded\nDURING = loaded(__name__)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import kmem_slow_import

    assert kmem_slow_import.DURING is None
    assert loaded("kmem_slow_import") is kmem_slow_import
    assert loaded("kmem_no_such_module") is None


def test_the_failed_request_is_read_from_each_frameworks_real_out_of_memory_message():
    import json

    from kmem_magic import backends

    path = os.path.join(os.path.dirname(__file__), "fixtures", "oom_messages.json")
    for case in json.load(open(path)):  # captured from real errors; version and source beside
        assert backends.oom_request(case["message"]) == case["bytes"], case["version"]
        assert backends.by_name(case["backend"]).oom_request(case["message"]) == case["bytes"]
    assert backends.oom_request("ValueError: shapes (3,) and (4,) do not align") is None


@pytest.mark.tensorflow
def test_an_out_of_memory_report_names_the_request_that_failed(fresh):
    pytest.importorskip("tensorflow")
    result = fresh("""
        ip.run_line_magic("load_ext", "kmem_magic")
        cell("import tensorflow as tf")
        r = cell("%%gpumem --quiet\\nbig = tf.zeros((2**40,))")
        RESULT["kind"] = last().error_kind
        RESULT["rules"] = [s["rule"] for s in advice()]
        RESULT["evidence"] = advice()[0]["evidence"]
    """)
    assert result["kind"] == "oom" and result["rules"] == ["out-of-memory"]
    assert result["evidence"].startswith("the request that failed: 4.00 TiB"), result["evidence"]
