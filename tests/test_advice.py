"""Advice: each rule fires on the measurements that justify it, and healthy cells stay silent.

Rules that need a GPU's figures are fed records shaped exactly like those measured on the H100
(docs/benchmarks.md); the rest run through real scenarios with TensorFlow on the CPU.
"""

import re

import pytest

from conftest import advise
from kmem_magic.advise import Context
from kmem_magic.advise.holders import LiveObject
from kmem_magic.record import CellRecord, Device, Figures, Peak, Timeline
from kmem_magic.plan.estimator import peak_under, typical_context

MiB, GiB = 2**20, 2**30


def record(peak=None, before=None, after=None, total=80 * GiB, limit=None, source="",
           others=None, error_kind=None, backend="jax", gpu=True):
    """A record as %%gpumem makes it: one GPU (or none), figures per source."""
    figures = Figures(before=dict(before or {}), after=dict(after or {}),
                      peak={k: Peak(v, k not in ("device", "process")) for k, v in (peak or {}).items()})
    devices = (Device(0, "NVIDIA H100 80GB HBM3", "GPU-0", total, limit),) if gpu else ()
    host = Figures(before={"host": 500 * MiB}, after={"host": 500 * MiB},
                   peak={"host": Peak(600 * MiB, True)})
    if not gpu:
        host = figures
    return CellRecord(
        execution_count=3, started_at="2026-11-25T12:00:00", wall_s=3.0, backend=backend,
        policy="growth", interval_s=0.1, devices=devices, gpu={0: figures} if gpu else {},
        host=host, timeline=Timeline(), source=source, others=others or {},
        error="ResourceExhaustedError" if error_kind else None, error_kind=error_kind)


def rules(suggestions):
    return [s.rule for s in suggestions]


def test_a_namespace_scan_that_fails_is_walked_once_however_many_rules_ask():
    walks = []

    def scan():
        walks.append(1)
        raise RecursionError("deep")

    ctx = Context(live_objects=scan)
    for _ in range(3):
        with pytest.raises(RecursionError):
            ctx.live
    assert walks == [1]


# --------------------------------------------------------------------------- healthy: silent
HEALTHY = {
    # kmem's own growth policy on jax: the CUDA context is most of what is held (H100 figures).
    "jax fit under growth": record(peak={"jax": 162 * MiB, "process": 876 * MiB},
                                   before={"jax": 0, "process": 0},
                                   after={"jax": 10 * MiB, "process": 876 * MiB}),
    "torch fit under growth": record(peak={"torch": 101 * MiB, "process": 852 * MiB},
                                     before={"torch": 0}, after={"torch": 80 * MiB},
                                     backend="torch"),
    "a pure Python cell": record(peak={"device": 900 * MiB}, before={"device": 900 * MiB},
                                 after={"device": 900 * MiB}),
    "no GPU, no Keras": record(peak={"host": 700 * MiB}, before={"host": 100 * MiB},
                               after={"host": 600 * MiB}, gpu=False, backend=None),
    "a small other process": record(peak={"jax": 1 * GiB}, others={0: [[42, "python", 300 * MiB]]}),
}


@pytest.mark.parametrize("name", list(HEALTHY))
def test_healthy_cells_get_no_suggestion(name):
    assert advise(HEALTHY[name], [], Context()) == []


def test_a_first_training_run_whose_model_holds_what_stayed_is_healthy():
    cell = record(peak={"jax": 3 * GiB}, before={"jax": 0}, after={"jax": 2 * GiB})
    ctx = Context(live_objects=lambda: [LiveObject("model", "Keras Sequential", 2 * GiB)])
    assert advise(cell, [], ctx) == []


# --------------------------------------------------------------------------- each rule
def test_preallocation_with_the_measured_excess_and_the_fix():
    cell = record(peak={"jax": 131 * MiB, "process": 61432 * MiB},
                  before={"process": 0}, after={"process": 61432 * MiB, "jax": 2 * MiB})
    [s] = advise(cell, [], Context())
    assert s.rule == "preallocation" and s.saving_kind == "measured"
    assert s.saving_bytes == 61432 * MiB - 131 * MiB
    assert "59.99 GiB" in s.title and "131.00 MiB" in s.title
    assert "restart the kernel" in s.code and "XLA_PYTHON_CLIENT_PREALLOCATE=false" in s.code


def test_other_processes_are_named_and_hidden_ones_are_said_to_be_hidden():
    cell = record(peak={"jax": GiB}, others={0: [[4242, "python3", 10 * GiB],
                                                 [999999, None, 5 * GiB]]})
    [s] = advise(cell, [], Context())
    assert s.rule == "other-processes" and s.saving_bytes == 15 * GiB
    assert "pid 4242 (python3, no kmem) holds 10.00 GiB" in s.evidence
    assert "1 process(es) this container cannot see" in s.evidence
    assert "--limit 58GiB" in s.code


def test_near_limit_computes_the_batch_size_that_fits_from_two_measured_sizes():
    fit = "history = model.fit(x, y, batch_size={}, epochs=1)"
    limit = 3648 * MiB  # batch 256 trains in it with the allocator's margin to spare
    history = [record(peak={"torch": 1024 * MiB}, source=fit.format(64), limit=limit),
               record(peak={"torch": 1792 * MiB}, source=fit.format(128), limit=limit)]
    cell = record(peak={"torch": 3328 * MiB}, source=fit.format(256), limit=limit)
    [s] = advise(cell, history, Context())
    # 12 MiB per sample and 256 MiB fixed; what fits under the limit is what the estimate's
    # model of the allocator's reserve leaves of it
    fits = int((peak_under(limit, "torch") - 256 * MiB) / (12 * MiB))
    assert s.rule == "near-limit" and 200 < fits < 256
    # ... but under a hard limit batch 256 trained: that is the proof, never less
    assert "batch_size=256   # the largest that trained under the 3.56 GiB limit" in s.code
    # on a whole device (no limit) the model plans, beside the CUDA context
    free = [record(peak={"torch": p * MiB}, source=fit.format(b))
            for b, p in ((64, 1024), (128, 1792))]
    total = 3600 * MiB
    [whole] = advise(record(peak={"torch": 3328 * MiB}, source=fit.format(256), total=total),
                     free, Context())
    room = peak_under(total - typical_context("torch"), "torch")
    assert f"batch_size={int((room - 256 * MiB) / (12 * MiB))}   # trains under the 3.52 GiB " \
        "device, beside the CUDA context" in whole.code
    assert "12.00 MiB per sample" in s.evidence and "91 % of the limit" in s.title


def test_near_limit_under_a_hard_limit_offers_a_batch_that_trained_only_with_the_margin():
    # find_batch_size's rule: a torch batch that trained leaving less than 9 % of its step's
    # own allocations ran out in the fit after (on the H200: the convnet, the LSTM)
    from kmem_magic.plan.finder import room_under

    fit = "history = model.fit(x, y, batch_size={}, epochs=1)"
    limit = 3400 * MiB  # batch 256 (3328 MiB, nothing in use before it) trained in it
    assert 3328 * MiB > room_under(limit, 0, "torch")
    history = [record(peak={"torch": 1024 * MiB}, source=fit.format(64), limit=limit),
               record(peak={"torch": 1792 * MiB}, source=fit.format(128), limit=limit)]
    cell = record(peak={"torch": 3328 * MiB}, source=fit.format(256), limit=limit)
    [s] = advise(cell, history, Context())
    fits = int((peak_under(limit, "torch") - 256 * MiB) / (12 * MiB))
    assert s.rule == "near-limit" and fits < 256
    assert f"batch_size={fits}   # trains under the 3.32 GiB limit" in s.code
    # the same runs on jax, whose pool needs no margin: the batch that trained is the proof
    jax_runs = [record(peak={"jax": r.figures(0).peak["torch"].bytes}, source=r.source,
                       limit=limit) for r in history + [cell]]
    [j] = advise(jax_runs[-1], jax_runs[:-1], Context())
    assert "batch_size=256   # the largest that trained under the 3.32 GiB limit" in j.code


def test_out_of_memory_gets_one_coherent_suggestion_not_a_near_limit_one_too():
    # A 3 GiB request under a 2 GiB limit: the allocator's peak is what succeeded before it
    # (768 B); "the peak reached 0 % of the limit" beside "out of memory" contradicted it.
    cell = record(peak={"jax": 768}, before={"jax": 0}, after={"jax": 0}, limit=2 * GiB,
                  error_kind="oom", source="big = jnp.ones((3 * GiB // 4,))")
    assert rules(advise(cell, [], Context())) == ["out-of-memory"]


def test_mixed_precision_for_a_float32_model_whose_activations_dominate():
    cell = record(peak={"jax": GiB}, before={"jax": 30 * MiB}, after={"jax": 30 * MiB})
    ctx = Context(dtype_policy="float32", keras_weights_bytes=10 * MiB,
                  keras_optimizer_bytes=20 * MiB)
    [s] = advise(cell, [], ctx)
    assert s.rule == "mixed-precision" and s.saving_bytes == (GiB - 40 * MiB) // 2
    assert "mixed_float16" in s.code
    assert advise(cell, [], Context(dtype_policy="mixed_float16", keras_weights_bytes=10 * MiB)) == []


def leaking_runs(source, runs, step):
    """``runs`` records of the same cell, each leaving ``step`` more in the jax allocator."""
    return [record(peak={"jax": GiB}, before={"jax": i * step}, after={"jax": (i + 1) * step},
                   source=source) for i in range(runs)]


def test_growth_held_by_the_users_own_list_names_the_list_not_the_loop():
    # The workshop's case: predict() in a loop, but the growth is the user's `preds` list.
    runs = leaking_runs("for batch in batches:\n    preds.append(model.predict(batch))", 3,
                        100 * MiB)
    ctx = Context(live_objects=lambda: [LiveObject("preds", "list of 30 (jax array)", 300 * MiB)])
    s = next(s for s in advise(runs[2], runs[:2], ctx) if s.rule == "regrowth")
    assert s.title == "preds keeps what every run adds", "not 'predict() in a loop'"
    assert "preds.clear()" in s.code and "3 runs" in s.evidence
    assert s.saving_bytes == 300 * MiB and s.saving_kind == "estimated from the holders' sizes"


def test_predict_in_a_loop_is_named_only_when_no_object_of_the_user_holds_the_growth():
    runs = leaking_runs("for batch in batches:\n    model.predict(batch)", 3, 100 * MiB)
    s = next(s for s in advise(runs[2], runs[:2], Context()) if s.rule == "regrowth")
    assert s.title == "predict() in a loop grows memory" and "training=False" in s.code
    assert s.saving_bytes is None, "no saving claimed that nobody measured"


def test_a_refit_that_grows_claims_no_measured_saving_and_no_clear_session_fix():
    # Re-running a fit cell: the allocator pool grows, no object of the user's holds it;
    # clearing Keras' session frees nothing of it, so it must not be offered as the fix.
    runs = leaking_runs("model.fit(x, y, epochs=1)", 2, 68 * MiB)
    ctx = Context(live_objects=lambda: [LiveObject("model", "Keras Sequential", 40 * MiB)])
    s = next(s for s in advise(runs[1], runs[:1], ctx) if s.rule == "regrowth")
    assert s.title == "Memory grows every time this cell runs"
    assert s.saving_bytes is None and "clear_session" not in s.code
    assert "may free none of it" in s.evidence


def _climbing(values, step_s=0.1):
    cell = record(peak={"jax": max(values)}, before={"jax": values[0]}, after={"jax": values[-1]},
                  source="for i in range(100):\n    model.train_on_batch(x, y)")
    series = cell.timeline.get("jax", 0)
    for i, value in enumerate(values):
        series.append(i * step_s, value)
    return cell


def test_memory_that_climbs_through_a_cell_is_named_with_what_grew():
    cell = _climbing([200 * MiB + i * 8 * MiB for i in range(50)])
    [s] = [s for s in advise(cell, [], Context()) if s.rule == "climb"]
    assert s.title == "Memory climbed through the cell: +392.00 MiB in jax"
    assert "rose in each fifth of the cell" in s.evidence and "retracing" in s.evidence
    kept = Context(live_objects=lambda: [LiveObject("losses", "list of 50 (jax array)",
                                                    390 * MiB)])
    [s] = [s for s in advise(cell, [], kept) if s.rule == "climb"]
    assert "losses (list of 50" in s.evidence and "losses.clear()" in s.code


def test_a_fit_that_allocates_once_and_stays_flat_does_not_climb():
    flat = _climbing([100 * MiB] * 5 + [900 * MiB] * 45)
    assert "climb" not in rules(advise(flat, [], Context()))
    noisy = _climbing([500 * MiB + (i % 3) * 30 * MiB for i in range(50)])
    assert "climb" not in rules(advise(noisy, [], Context()))


def test_models_built_in_a_loop_get_clear_session_advice():
    source = "for units in [64, 128]:\n    model = keras.Sequential([keras.layers.Dense(units)])"
    runs = [record(peak={"jax": GiB}, before={"jax": 0}, after={"jax": 64 * MiB}, source=source)
            for _ in range(2)]
    s = next(s for s in advise(runs[1], runs[:1], Context()) if s.rule == "regrowth")
    assert "clear_session()" in s.code and "loop" in s.title


# --------------------------------------------------------------------------- real scenarios
@pytest.mark.tensorflow
def test_real_cells_on_tensorflow_left_behind_regrowth_and_out_of_memory(fresh):
    pytest.importorskip("tensorflow")
    result = fresh("""
        ip.run_line_magic("load_ext", "kmem_magic")
        cell("import numpy as np, keras, weakref\\n"
             "model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(1024)])\\n"
             "x = np.ones((8192, 256), 'float32')\\npreds = []")
        # 1. a displayed result stays alive in Out[]
        cell("%%gpumem --quiet\\nkeras.ops.ones((64, 1024, 1024))")
        RESULT["shown"] = [s["rule"] for s in advice()]
        RESULT["shown_evidence"] = " ".join(s["evidence"] for s in advice())
        cell("%reset -f out")
        # 2. predict in a loop, run three times
        loop = "%%gpumem --quiet\\nfor i in range(2):\\n    preds.append(model.predict(x, verbose=0))"
        for _ in range(3):
            cell(loop)
        RESULT["loop"] = [s["title"] for s in advice()]
        # 3. out of memory: the cell fails, its frames are released, the next cell runs
        r = cell("%%gpumem\\nimport tensorflow as tf\\ndef step():\\n"
                 "    batch = np.ones(50 * 2**20 // 8)\\n    refs.append(weakref.ref(batch))\\n"
                 "    return tf.zeros((2**40,))\\nrefs = []\\nstep()")
        RESULT["oom_failed"] = not r.success
        RESULT["oom_kind"] = last().error_kind
        RESULT["oom_first"] = advice()[0]["rule"]
        import gc; gc.collect()
        RESULT["batch_freed"] = ip.user_ns["refs"][0]() is None
        r = cell("%%gpumem --quiet\\nmodel.predict(x[:8], verbose=0).shape")
        RESULT["next_ok"] = r.success
        cell("%gpumem history")
    """)
    assert "left-behind" in result["shown"] and "Out[" in result["shown_evidence"]
    assert "preds keeps what every run adds" in result["loop"], "the list, not predict()"
    assert result["oom_failed"] and result["oom_kind"] == "oom"
    assert result["oom_first"] == "out-of-memory"
    assert result["batch_freed"], "the failed cell's locals were released"
    assert result["next_ok"]
    assert "Out of memory (ResourceExhaustedError)" in result["_stdout"]
    assert "preds keeps what every run adds" in result["_stdout"], "%gpumem history lists it"


@pytest.mark.tensorflow
def test_compare_measures_both_policies_on_clones_and_touches_nothing_of_the_user(fresh):
    pytest.importorskip("tensorflow")
    result = fresh("""
        ip.run_line_magic("load_ext", "kmem_magic")
        cell("import numpy as np, keras\\n"
             "x = np.random.rand(1024, 256).astype('float32'); y = np.random.randint(0, 10, 1024)\\n"
             "model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(1024, activation='relu'),"
             " keras.layers.Dense(10)])\\n"
             "model.compile('adam', keras.losses.SparseCategoricalCrossentropy(from_logits=True))")
        r = cell("%%gpumem --compare mixed_float16 --quiet\\n"
                 "history = model.fit(x, y, batch_size=128, epochs=1, verbose=0)")
        import keras
        RESULT["ok"] = r.success
        RESULT["steps"] = int(ip.user_ns["model"].optimizer.iterations)
        RESULT["history_model"] = ip.user_ns["history"].model is ip.user_ns["model"]
        RESULT["policy"] = keras.config.dtype_policy().name
        RESULT["max_steps"] = keras.config.max_steps_per_epoch()
        RESULT["user_dtype"] = ip.user_ns["model"].layers[0].dtype_policy.name
        r = cell("%%gpumem --compare mixed_float16 --quiet\\nclass Sub(keras.Model):\\n"
                 "    def call(self, x):\\n        return x\\nsub = Sub()")
        RESULT["sub_ok"] = r.success
    """)
    assert result["ok"]
    assert re.search(r"--compare \(5 steps, host RSS\): float32 needed .+, mixed_float16 .+ "
                     r"\((mixed_float16 saves .+|mixed_float16 needs .+ more|the same)\)",
                     result["_stdout"])
    assert result["steps"] == 8, "the 8 real steps only: comparison runs trained clones"
    assert result["history_model"], "the user's variables come from the real run"
    assert result["policy"] == "float32" and result["max_steps"] is None, "settings restored"
    assert result["user_dtype"] == "float32"
    assert result["sub_ok"]
    assert "--compare needs Sequential or functional models" in result["_stdout"]


def test_compare_on_jax_reads_each_clones_compiled_step_from_xla(fresh):
    # JAX cannot reset its peak counter between the alternating runs; XLA's buffer assignment
    # of each clone's compiled training step is read instead (real XLA, on the CPU here).
    pytest.importorskip("jax")
    result = fresh("""
        ip.run_line_magic("load_ext", "kmem_magic")
        cell("import numpy as np, keras\\n"
             "x = np.random.rand(512, 32, 32, 3).astype('float32'); y = np.random.randint(0, 10, 512)\\n"
             "model = keras.Sequential([keras.Input((32, 32, 3)),"
             " keras.layers.Conv2D(32, 3, padding='same', activation='relu'),"
             " keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])\\n"
             "model.compile('adam', keras.losses.SparseCategoricalCrossentropy(from_logits=True))")
        r = cell("%%gpumem --compare mixed_float16 --quiet\\n"
                 "model.fit(x, y, batch_size=128, epochs=1, verbose=0)\\nNone")
        RESULT["ok"] = r.success
        RESULT["advice"] = advice()
    """, env={"KERAS_BACKEND": "jax"})
    line = next(l for l in result["_stdout"].splitlines() if l.startswith("--compare"))
    assert result["ok"] and "(5 steps, XLA buffer assignment)" in line
    assert "mixed_float16 saves" in line  # activations in float16: half the bytes
    measured = [s for s in result["advice"] if s["rule"] == "mixed-precision-measured"]
    assert measured and measured[0]["saving_kind"] == "measured"
