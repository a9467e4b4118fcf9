"""kmem_magic.find_batch_size's control flow with a real Keras model training on the CPU
(TensorFlow). The device is faked at its boundary only: TensorFlow's allocator counters
(``tf.config.experimental.get_memory_info`` and ``reset_memory_stats`` on a ``GPU:0``) read a
fake allocator, on which every training step allocates through a layer of the model: the peak
of a step follows a known law of the batch size, and a step that needs more than the fake
device's capacity raises TensorFlow's real out-of-memory error, as a GPU would. The search,
the probes, the backend's counter reads, the recovery and the restoring of the model are all
real."""

import gc
import weakref

import pytest

pytestmark = pytest.mark.tensorflow

keras = pytest.importorskip("keras")
np = pytest.importorskip("numpy")
tf = pytest.importorskip("tensorflow")

import kmem_magic  # noqa: E402
from kmem_magic import backends  # noqa: E402
from kmem_magic.plan.estimator import limit_for, peak_under  # noqa: E402
from kmem_magic.sizes import parse_limit  # noqa: E402

MiB = 2**20


class FakeDevice:
    """An allocator whose step peak is fixed + per_sample x batch; above capacity a step fails
    with an out-of-memory error. Between steps nothing is in use but what uncollected
    reference cycles hold (``garbage``)."""

    def __init__(self, fixed, per_sample, capacity=None):
        self.fixed, self.per_sample, self.capacity = fixed, per_sample, capacity
        self.peak = 0
        self.steps = []
        self.garbage = []  # (weak reference to a reference cycle, the bytes it holds)

    def held(self):
        """What uncollected reference cycles hold on the device."""
        return sum(size for ref, size in self.garbage if ref() is not None)

    def allocate(self, batch_size):
        need = self.held() + self.fixed + self.per_sample * batch_size
        if self.capacity is not None and need > self.capacity:
            raise tf.errors.ResourceExhaustedError(None, None,
                                                   "OOM when allocating tensor with shape")
        self.peak = max(self.peak, need)
        self.steps.append(batch_size)

    def install(self, monkeypatch):
        """TensorFlow's counter API on a GPU:0 reads this allocator."""
        counters = tf.config.experimental
        monkeypatch.setattr(backends.by_name("tensorflow"), "_gpu_names", ["GPU:0"])
        monkeypatch.setattr(counters, "get_memory_info",
                            lambda name: {"current": int(self.held()), "peak": int(self.peak)})
        monkeypatch.setattr(counters, "reset_memory_stats", lambda name: setattr(self, "peak", 0))
        return self


class Allocates(keras.layers.Layer):
    """Passes its input through; each training step allocates its batch on the fake device."""

    def __init__(self, device, **kwargs):
        super().__init__(**kwargs)
        self.device = device

    def call(self, x, training=False):
        if training:
            self.device.allocate(int(x.shape[0]))
        return x


@pytest.fixture
def device():
    return FakeDevice(fixed=0, per_sample=0)


@pytest.fixture
def model(device):
    net = keras.Sequential([keras.Input((32,)), Allocates(device),
                            keras.layers.Dense(64, activation="relu"), keras.layers.Dense(4)])
    # eagerly, so that the layer sees each step's real batch size
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                run_eagerly=True)
    return net


def fake(device, monkeypatch, fixed, per_sample, capacity=None):
    device.fixed, device.per_sample, device.capacity = fixed, per_sample, capacity
    device.steps.clear()
    return device.install(monkeypatch)


@pytest.fixture
def data():
    return np.random.rand(2000, 32).astype("float32"), np.random.randint(0, 4, 2000)


def state(model):
    return ([w.copy() for w in model.get_weights()],
            [np.array(v.numpy()) for v in model.optimizer.variables])


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1]))


def test_finds_the_largest_batch_within_the_budget_and_leaves_the_model_as_it_was(
        monkeypatch, device, model, data):
    x, y = data
    model.fit(x, y, batch_size=100, epochs=1, verbose=0)  # trained: optimizer state exists
    fake(device, monkeypatch, fixed=300 * MiB, per_sample=0.5 * MiB)
    before = state(model)
    found = kmem_magic.find_batch_size(model, x, y, budget="800MiB")
    # the allocator's reserve beyond a step's peak must fit in the budget too
    fits = int((peak_under(800 * MiB, "tensorflow") - 300 * MiB) / (0.5 * MiB))
    assert found.batch_size == fits
    assert limit_for(found.peak_bytes, "tensorflow") <= 800 * MiB
    assert found.limited_by == "memory" and found.margin_bytes == 800 * MiB - found.peak_bytes
    # the estimate knows nothing of the fake device: still at most three probe steps
    # each probe is three steps of a real fit at its batch size (fit's pipeline holds more
    # than one train_on_batch), and the user's History survives them
    assert len(found.probes) <= 3
    assert device.steps == [p.batch_size for p in found.probes for _ in range(3)]
    assert model.history.history["loss"], "the fit before the search is still model.history"
    assert same(before, state(model)), "the probe steps trained; the model must not show it"
    assert f"batch size {fits} trains" in str(found) and "to spare" in str(found)


def test_an_out_of_memory_probe_is_survived_and_the_search_backs_off(
        monkeypatch, device, model, data):
    x, y = data
    # the budget says 1200 samples would fit, but the device runs out at 700
    fake(device, monkeypatch, fixed=100 * MiB, per_sample=1 * MiB, capacity=800 * MiB)
    before = state(model)
    found = kmem_magic.find_batch_size(model, x, y, budget=1300 * MiB)
    outcomes = [p.outcome for p in found.probes]
    assert "out of memory" in outcomes
    assert 0.9 * 700 <= found.batch_size <= 700
    [answer] = [p for p in found.probes if p.batch_size == found.batch_size]
    assert answer.outcome == "fits" and answer.peak_bytes == found.peak_bytes
    assert answer.peak_bytes <= answer.room_bytes, "the room it was judged by is kept"
    assert same(before, state(model))
    monkeypatch.undo()
    # goes on, on the same device: the batch found trains without running out of memory
    history = model.fit(x, y, batch_size=found.batch_size, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


class Cycles(keras.layers.Layer):
    """Passes its input through; each training step leaves a reference cycle holding its
    activations (the fake device's bytes of its batch), as Keras' torch tree helpers leave
    cycles holding a step's tensors."""

    def __init__(self, device, **kwargs):
        super().__init__(**kwargs)
        self.device = device

    def call(self, x, training=False):
        if training:
            junk = Junk()
            junk.me = junk
            self.device.garbage.append((weakref.ref(junk), self.device.per_sample * x.shape[0]))
        return x


class Junk:
    pass


def test_the_fit_after_the_search_gets_the_room_its_probes_had(monkeypatch, device, data):
    # Cyclic garbage holds memory until the collector runs, which no allocator asks for: on
    # the H200 a search left 125 MiB more in use than one fit does, and the fit after it, at
    # the batch a probe had trained at, ran out. With the collector off, nothing else
    # collects it here.
    x, y = data
    net = keras.Sequential([keras.Input((32,)), Cycles(device), Allocates(device),
                            keras.layers.Dense(64, activation="relu"), keras.layers.Dense(4)])
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                run_eagerly=True)
    # two probes over the budget (they ran, and left their garbage), then one that fits
    fake(device, monkeypatch, fixed=300 * MiB, per_sample=0.5 * MiB)
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    try:
        found = kmem_magic.find_batch_size(net, x, y, budget=1000 * MiB)
        left = device.held()
    finally:
        if collecting:
            gc.enable()
    assert len({p.batch_size for p in found.probes}) >= 2 and found.batch_size > 0
    assert left == 0, "the fit after the search has the device to itself"
    # each probe's peak is its own: its step beside the cycles its three steps left (nothing
    # collects them here), not beside the earlier probes'; so the answer is the law's
    assert all(p.peak_bytes == 300 * MiB + 4 * 0.5 * MiB * p.batch_size for p in found.probes)
    assert found.batch_size == int((peak_under(1000 * MiB, "tensorflow") - 300 * MiB)
                                   / (4 * 0.5 * MiB))


def test_the_data_limits_the_batch_when_memory_does_not(monkeypatch, device, model, data):
    x, y = data
    fake(device, monkeypatch, fixed=10 * MiB, per_sample=1000)
    found = kmem_magic.find_batch_size(model, x[:300], y[:300], budget="1GiB")
    assert found.batch_size == 300 and found.limited_by == "data"
    assert "limited by the data" in str(found)


def test_without_a_gpu_it_says_so_and_changes_nothing(model, data):
    x, y = data
    before = state(model) if model.optimizer.built else None
    with pytest.raises(ValueError, match="needs a GPU"):
        kmem_magic.find_batch_size(model, x, y, budget="1GiB")
    after = state(model)
    if before is not None:
        assert same(before, after)
    assert all(not np.any(v) for v in after[1][2:]), "optimizer slots stay as built (zeros)"


@pytest.mark.parametrize("kwargs, message", [
    ({"budget": "lots"}, "not a size"),
    ({"budget": -5}, "budget must be bytes"),
    ({"headroom": 1.5}, "headroom must be in"),
    ({"max_probes": 0}, "max_probes must be a positive integer"),
])
def test_bad_arguments_get_one_line_and_change_nothing(model, data, kwargs, message):
    x, y = data
    with pytest.raises(ValueError, match=message):
        kmem_magic.find_batch_size(model, x, y, **{"budget": "1GiB", **kwargs})
    assert not model.optimizer.built


def test_an_uncompiled_model_or_empty_data_is_refused(data):
    x, y = data
    bare = keras.Sequential([keras.Input((32,)), keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="compiled Keras model"):
        kmem_magic.find_batch_size(bare, x, y, budget="1GiB")
    bare.compile("sgd", "mse")
    with pytest.raises(ValueError, match="samples in it"):
        kmem_magic.find_batch_size(bare, x[:0], y[:0], budget="1GiB")


def test_the_default_budget_is_the_free_gpu_memory_less_headroom_and_a_larger_one_is_capped(
        fake_nvml, monkeypatch, device, model, data):
    from conftest import gpu

    x, y = data
    fake_nvml([gpu(0, total=16 * 2**30, used=4 * 2**30)])  # 12 GiB free for this process
    fake(device, monkeypatch, fixed=1 * 2**30, per_sample=8 * MiB)
    default = kmem_magic.find_batch_size(model, x, y, headroom=0.25)
    assert default.budget_bytes == 9 * 2**30 and not default.capped and not default.hard
    assert default.batch_size == (peak_under(9 * 2**30, "tensorflow") - 2**30) // (8 * MiB)
    capped = kmem_magic.find_batch_size(model, x, y, budget="64GiB")
    assert capped.budget_bytes == 12 * 2**30 and capped.capped and capped.hard
    assert "capped at what this process may use" in str(capped)
    assert capped.peak_bytes <= 12 * 2**30 and len(capped.probes) <= 3
    share = kmem_magic.find_batch_size(model, x, y, budget="share:4")  # a workshop's share
    assert share.budget_bytes == parse_limit("share:4").bytes_of(16 * 2**30) and not share.hard


def test_a_keras_backend_without_a_gpu_allocator_gets_keras_own_error(fresh):
    # Keras' numpy backend cannot train: the user sees Keras' message, not a bare StopIteration
    # from looking up an allocator that backend does not have.
    result = fresh("""
        import numpy as np, keras, kmem_magic
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile("adam", "mse")
        try:
            kmem_magic.find_batch_size(model, np.ones((64, 4), "float32"),
                                       np.ones((64, 2), "float32"), budget="64MiB")
        except Exception as error:
            RESULT["error"] = f"{type(error).__name__}: {error}"
    """, env={"KERAS_BACKEND": "numpy"})
    assert result["error"].startswith("NotImplementedError") and "NumPy" in result["error"]


@pytest.mark.parametrize("room", [1.5, 2.5])
def test_on_jax_under_a_hard_limit_the_step_that_trained_is_the_proof(fresh, room):
    # jax's counters are faked at their boundary (a GPU whose memory_stats() say 1 MiB in use
    # of a 256 MiB limit), and so is its refusal: XLA fits a step into the limit by
    # recomputing, up to ``room`` x the limit by its own plan (2-3x on the H200), and a larger
    # batch runs out of memory, raised as XLA says it. The plans are XLA's real ones.
    result = fresh("""
        import numpy as np, keras, kmem_magic
        from kmem_magic import backends
        MiB = 2**20
        jax_backend = backends.by_name("jax")

        class Gpu:
            id = local_hardware_id = 0
            platform = "gpu"
            def memory_stats(self):
                return {"bytes_in_use": MiB, "peak_bytes_in_use": 2 * MiB,
                        "bytes_limit": 256 * MiB}

        cap = [None]
        class Refuses(keras.layers.Layer):
            def call(self, x, training=False):
                if training and cap[0] and x.shape[0] > cap[0]:
                    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                                       f"allocate the step at batch {x.shape[0]}")
                return x

        model = keras.Sequential([keras.Input((256,)), Refuses(),
                                  keras.layers.Dense(1024, activation="relu"),
                                  keras.layers.Dense(1024, activation="relu"),
                                  keras.layers.Dense(4)])
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x = np.random.rand(100_000, 256).astype("float32")
        y = np.random.randint(0, 4, 100_000)
        model.fit(x[:8], y[:8], batch_size=8, verbose=0)
        plan = lambda n: MiB + jax_backend.step_bytes(model, x[:n], y[:n])
        slope = (plan(2000) - plan(1000)) / 1000
        cap[0] = int(1000 + (ROOM * 256 * MiB - plan(1000)) / slope)
        jax_backend._devices = [Gpu()]
        before = [v.numpy().copy() for v in model.variables + model.optimizer.variables]
        found = kmem_magic.find_batch_size(model, x, y)
        after = [v.numpy() for v in model.variables + model.optimizer.variables]
        RESULT.update(cap=cap[0], found=found.batch_size, hard=found.hard, text=str(found),
                      probes=[(p.batch_size, p.outcome) for p in found.probes],
                      planned=plan(found.batch_size),
                      same=all(np.array_equal(a, b) for a, b in zip(before, after)))
        n = found.batch_size
        RESULT["fit"] = model.fit(x[:3 * n], y[:3 * n], batch_size=n, verbose=0).history["loss"]
    """.replace("ROOM", str(room)), env={"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    cap, found = result["cap"], result["found"]
    assert result["hard"] and len(result["probes"]) <= 3
    assert cap / 2 <= found <= cap, "within the doubling's resolution, never above what trains"
    assert any(o == "out of memory" for _, o in result["probes"]), "it searched up to a failure"
    assert all(o.startswith("fits") for b, o in result["probes"] if b <= cap)
    assert result["same"], "the probes trained; the model must not show it"
    assert len(result["fit"]) == 1, "the batch found trains in a real fit"
    if result["planned"] > 256 * 2**20:
        assert "though XLA planned" in result["text"] and "to spare" not in result["text"]


def test_a_restore_that_runs_out_of_memory_is_retried_and_the_model_is_as_it_was(
        monkeypatch, device, model, data):
    # Restoring a variable allocates its new value before the old one is freed; under a tight
    # limit that can run out (jax, a 195 MiB table on an H200). The framework's own error is
    # raised by the first assignment of the largest kernel after the probes.
    x, y = data
    model.fit(x, y, batch_size=100, epochs=1, verbose=0)
    fake(device, monkeypatch, fixed=300 * MiB, per_sample=0.5 * MiB)
    before = state(model)
    kernel = model.layers[1].kernel
    real, calls = kernel.assign, []

    def assign(value):
        calls.append(1)
        if len(calls) == 1:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real(value)

    monkeypatch.setattr(kernel, "assign", assign)
    found = kmem_magic.find_batch_size(model, x, y, budget="800MiB")
    assert len(calls) == 2 and found.batch_size > 0
    assert same(before, state(model)), "every variable restored, the retried one included"


def test_under_a_hard_limit_a_weight_heavy_model_is_not_left_at_batch_one(
        fake_nvml, monkeypatch, device, model, data):
    # On an H200 an MLP whose weights filled most of the limit got batch 1: the estimate's
    # planned reserve put even batch 1 over the limit. Here the device has 25 MiB for this
    # process, 20 MiB are fixed and each sample needs 4 KiB: 1,280 samples fit, of which kmem
    # may take what leaves the allocator its fragmentation margin.
    from conftest import gpu

    from kmem_magic.plan.finder import _FRAGMENTATION

    f = _FRAGMENTATION["tensorflow"]  # of the step's own allocations (nothing in use before)
    room = int(((25 * MiB) / (1 + f) - 20 * MiB) / 4096)

    x, y = data
    fake_nvml([gpu(0, total=1024 * MiB, used=999 * MiB)])
    fake(device, monkeypatch, fixed=20 * MiB, per_sample=4096, capacity=25 * MiB)
    found = kmem_magic.find_batch_size(model, x, y)
    assert found.hard and found.estimated_batch == 0 and "the estimate said none fits" in str(found)
    assert 0.75 * room <= found.batch_size <= room and len(found.probes) <= 3
    # a batch a probe trained, or one below a batch that trained too near the limit, its peak
    # read from the line through two measured steps
    trained = [p.batch_size for p in found.probes if p.outcome != "out of memory"]
    assert found.batch_size in trained or (
        found.interpolated and found.batch_size < max(trained)
        and "a larger batch trained" in str(found))
    history = model.fit(x[:3 * found.batch_size], y[:3 * found.batch_size],
                        batch_size=found.batch_size, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]), "the batch found trains under the limit"


# On the H200 the zoo's MLP trained at batch 1, ran out at 3571 and, by chance near its limit,
# at 1786: three probes, and "batch size 1 trains". Here two probes end the same way (batch 1
# fits, 2000 runs out); the search goes on halving down from the failure, twice at most.
@pytest.mark.parametrize("fixed_mib, capacity_mib, after", [
    (20, 27, [(1000, "fits")]),
    (2, 5, [(1000, "out of memory"), (500, "fits")]),  # the first half runs out too
])
def test_an_answer_far_below_a_batch_that_ran_out_is_halved_down_from_it(
        fake_nvml, monkeypatch, device, model, data, fixed_mib, capacity_mib, after):
    from conftest import gpu

    x, y = data
    fake_nvml([gpu(0, total=1024 * MiB, used=(1024 - capacity_mib) * MiB)])
    fake(device, monkeypatch, fixed=fixed_mib * MiB, per_sample=4096,
         capacity=capacity_mib * MiB)
    found = kmem_magic.find_batch_size(model, x, y, max_probes=2)
    assert [(p.batch_size, p.outcome) for p in found.probes] == [
        (1, "fits"), (2000, "out of memory")] + after
    assert found.batch_size == after[-1][0] and f"{2 + len(after)} probes" in str(found)
    assert found.peak_bytes <= found.probes[-1].room_bytes
