"""Who holds memory: the holders scan over a real namespace (numpy arrays, the user's own
containers and objects), bounded in depth and in work."""

import numpy as np
import pytest

from kmem_magic.advise import holders
from kmem_magic.advise.holders import scan

MiB = 2**20


class Trainer:
    def __init__(self):
        self.batches = {"train": np.zeros(4 * MiB, np.uint8)}
        self.name = "t"


def test_arrays_inside_dicts_lists_and_attributes_are_found_under_the_users_name():
    found = {h.name: h for h in scan({
        "cache": {"a": np.zeros(2 * MiB, np.uint8), "b": np.zeros(3 * MiB, np.uint8)},
        "predictions": [np.zeros(MiB, np.uint8) for _ in range(4)],
        "trainer": Trainer(),
        "small": np.zeros(10, np.uint8),
    })}
    assert found["cache"].bytes == 5 * MiB and found["cache"].kind == "dict of 2 (numpy array (host))"
    assert found["predictions"].bytes == 4 * MiB and "list of 4" in found["predictions"].kind
    assert found["trainer"].bytes == 4 * MiB and found["trainer"].kind.startswith("Trainer holding")
    assert "small" not in found


def test_each_array_counts_once_under_its_first_name():
    shared = np.zeros(8 * MiB, np.uint8)
    found = scan({"first": shared, "again": [shared], "alias": {"x": shared}})
    assert [(h.name, h.bytes) for h in found] == [("first", 8 * MiB)]


def test_the_scan_stops_at_its_depth():
    deep = {"l1": {"l2": {"l3": np.zeros(4 * MiB, np.uint8)}}}
    assert scan({"deep": deep}) == [], "three levels down is past MAX_DEPTH"
    assert scan({"deep": deep["l1"]})[0].bytes == 4 * MiB


def test_a_huge_namespace_is_cut_short_and_says_so(monkeypatch):
    monkeypatch.setattr(holders, "MAX_VISITS", 1000)
    namespace = {f"v{i}": [[i]] for i in range(5000)}  # each needs a look inside
    namespace["big"] = np.zeros(4 * MiB, np.uint8)
    found = scan(namespace)
    assert found[-1].name == "(scan stopped early)"


class Proxy:
    """Like werkzeug's LocalProxy with nothing bound: asking its class raises."""

    @property
    def __class__(self):
        raise RuntimeError("working outside of a context")


def test_an_object_that_refuses_to_be_inspected_is_skipped():
    found = scan({"proxy": Proxy(), "big": np.zeros(2 * MiB, np.uint8)})
    assert [h.name for h in found] == ["big"]


def test_an_old_traceback_from_the_cells_own_frame_does_not_count_the_namespace_twice():
    namespace = {"cache": np.zeros(8 * MiB, np.uint8)}
    try:
        exec("1 / 0", namespace)  # a cell's frame: its locals are the namespace itself
    except ZeroDivisionError as error:
        tb = error.__traceback__
    assert [h.name for h in scan(namespace, tb)] == ["cache"], "not 'the last traceback' too"


@pytest.mark.tensorflow
def test_every_report_of_a_cell_that_left_memory_names_its_holders(fresh):
    pytest.importorskip("tensorflow")
    result = fresh("""
        ip.run_line_magic("load_ext", "kmem_magic")
        cell("import numpy as np, keras, tensorflow as tf")
        cell("%%gpumem --quiet\\nheld = tf.ones((4096, 4096, 4))")
        RESULT["held"] = [[h.name, h.kind, h.bytes] for h in last().holders]
        from kmem_magic.show.text import summary
        RESULT["summary"] = summary(last())
        cell("%%gpumem --quiet\\nsmall = 1")
        RESULT["nothing"] = list(last().holders)
        cell("%%gpumem --quiet\\nmodel = keras.Sequential([keras.Input((1024,)), "
             "keras.layers.Dense(4096)])\\nmodel.compile('adam', 'mse')\\n"
             "model.fit(np.ones((64, 1024)), np.ones((64, 4096)), verbose=0)")
        RESULT["model"] = [[h.name, h.kind, h.bytes] for h in last().holders]
    """)
    name, kind, size = result["held"][0]
    assert name == "held" and kind == "TensorFlow tensor" and size == 256 * 2**20
    assert "held by: held (TensorFlow tensor, 256.00 MiB)" in result["summary"]
    assert result["nothing"] == [], "a cell that left nothing lists no holders"
    model = [h for h in result["model"] if h[0] == "model"]
    assert model and "weights 16.02 MiB, optimizer slots 32.03 MiB" in model[0][1], result["model"]
