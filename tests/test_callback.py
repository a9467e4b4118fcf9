"""MemoryCallback with a real Keras fit (TensorFlow on the CPU; the GPU rows run on the GPU)."""

import pytest

pytestmark = pytest.mark.tensorflow


def test_callback_records_every_batch_of_fit_evaluate_and_predict(fresh):
    pytest.importorskip("tensorflow")
    result = fresh("""
        import numpy as np, keras
        from kmem_magic import MemoryCallback
        x = np.random.rand(640, 32).astype("float32"); y = np.random.randint(0, 4, 640)
        model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(4)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        cb = MemoryCallback(every=1)
        model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[cb])
        model.evaluate(x, y, batch_size=128, verbose=0, callbacks=[cb])
        model.predict(x, batch_size=320, verbose=0, callbacks=[cb])
        every = MemoryCallback(every=5)
        model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[every])
        for step in range(3):
            model.train_on_batch(x[:64], y[:64])
            cb.record("train_on_batch", step)
        RESULT["phases"] = [r["phase"] for r in cb.history]
        RESULT["host"] = all(r["host_rss_bytes"] > 0 for r in cb.history)
        RESULT["allocator"] = [r["allocator_bytes"] for r in cb.history][:3]
        RESULT["every"] = [r["batch"] for r in every.history]
        RESULT["csv"] = cb.to_csv().splitlines()[0]
        cb.plot().savefig("/dev/null", format="png")
        shown, _ = ip.display_formatter.format(cb.plot())  # what a notebook shows as its value
        RESULT["shown"] = sorted(shown)
        RESULT["png"] = shown.get("image/png", b"")[:8].hex() if isinstance(
            shown.get("image/png"), bytes) else str(shown.get("image/png", ""))[:12]
        try:
            MemoryCallback(every=0)
        except ValueError as error:
            RESULT["bad"] = str(error)
    """)
    phases = result["phases"]
    assert phases.count("train") == 20 and phases.count("test") == 5
    assert phases.count("predict") == 2 and phases.count("train_on_batch") == 3
    assert result["host"]
    assert result["allocator"] == [None, None, None], "no GPU allocator here: unknown, not 0"
    assert result["every"] == [0, 5]
    assert result["csv"] == "t_s,phase,batch,allocator_bytes,device_used_bytes,host_rss_bytes"
    assert "positive integer" in result["bad"]
    assert "image/png" in result["shown"], "cb.plot() displays as a picture, not a repr"
    assert result["png"].startswith("89504e47") or result["png"].startswith("iVBOR")


def test_recording_keeps_within_its_time_budget():
    pytest.importorskip("keras")
    import time

    from kmem_magic import MemoryCallback

    slow = MemoryCallback(overhead=0.01)
    for batch in range(10):  # steps of 100 ms: every one is recorded
        slow.on_train_batch_begin(batch)
        time.sleep(0.1)
    slow.on_epoch_end(0)
    assert [row["batch"] for row in slow.history] == list(range(10))

    fast = MemoryCallback(overhead=0.01)
    start = time.perf_counter()
    for batch in range(3000):  # back-to-back steps: recording every one would cost 100 %
        fast.on_train_batch_begin(batch)
    elapsed = time.perf_counter() - start
    recorded = [row["batch"] for row in fast.history]
    assert 0 < len(recorded) < 3000 and recorded == sorted(recorded)
    assert fast._spent <= 0.01 * elapsed + 0.001  # one row of slack: the check runs before it


def test_budgeted_rows_read_nvml_and_host_rss_at_most_twice_a_second(monkeypatch):
    pytest.importorskip("keras")
    import time

    from kmem_magic import MemoryCallback, backends

    # a started JAX whose allocator counter says 5 MiB (faked at the counter)
    jax = type(backends.by_name("jax"))
    monkeypatch.setattr(jax, "is_initialized", lambda self: True)
    monkeypatch.setattr(jax, "stats", lambda self: {0: {"bytes_in_use": 5 * 2**20}})
    callback = MemoryCallback(overhead=1.0)
    for batch in range(6):  # steps of 200 ms
        callback.on_train_batch_begin(batch)
        time.sleep(0.2)
    callback.on_epoch_end(0)
    rows = callback.history
    assert [row["allocator_bytes"] for row in rows] == [5 * 2**20] * 6
    with_host = [row["batch"] for row in rows if row["host_rss_bytes"] is not None]
    assert with_host[0] == 0 and 2 <= len(with_host) <= 3, with_host
    assert callback.record("train_on_batch")["host_rss_bytes"] > 0, "record() reads everything"
    every = MemoryCallback(every=1)
    for batch in range(3):
        every.on_train_batch_begin(batch)
    every.on_epoch_end(0)
    assert all(row["host_rss_bytes"] for row in every.history)


def test_rows_are_taken_on_the_thread_that_runs_fit_with_validation_in_between(fresh):
    # On jax, Keras runs batch-end hooks on a worker thread, and JAX's memory_stats() from a
    # second thread stalls the training loop: every row must come from the loop's own thread.
    pytest.importorskip("jax")
    result = fresh("""
        import threading
        import numpy as np, keras
        from kmem_magic import MemoryCallback

        class Where(MemoryCallback):
            def record(self, phase="train", batch=None):
                row = super().record(phase, batch)
                row["thread"] = threading.get_ident()
                return row

        x = np.random.rand(320, 8).astype("float32"); y = np.random.rand(320, 1)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        cb = Where(every=1)
        model.fit(x, y, batch_size=64, epochs=2, validation_data=(x[:128], y[:128]),
                  validation_batch_size=32, verbose=0, callbacks=[cb])
        RESULT["rows"] = [(r["phase"], r["batch"]) for r in cb.history]
        RESULT["main"] = all(r["thread"] == threading.get_ident() for r in cb.history)
    """, env={"KERAS_BACKEND": "jax"})
    epoch = [["train", b] for b in range(5)] + [["test", b] for b in range(4)]
    assert result["rows"] == epoch + epoch
    assert result["main"]


def test_epochs_are_marked_on_the_gpumem_time_axis(fresh):
    pytest.importorskip("tensorflow")
    result = fresh("""
        ip.run_line_magic("load_ext", "kmem_magic")
        cell("import numpy as np, keras\\nfrom kmem_magic import MemoryCallback\\n"
             "x = np.random.rand(256, 8).astype('float32'); y = np.random.rand(256, 1)\\n"
             "model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(1)])\\n"
             "model.compile('sgd', 'mse')")
        cell("%%gpumem --quiet\\nmodel.fit(x, y, epochs=3, verbose=0, callbacks=[MemoryCallback()])")
        record = last()
        RESULT["marks"] = [m[1] for m in record.timeline.marks]
        RESULT["ordered"] = [m[0] for m in record.timeline.marks] == sorted(m[0] for m in record.timeline.marks)
    """)
    assert result["marks"] == ["epoch 1", "epoch 2", "epoch 3"]
    assert result["ordered"]
