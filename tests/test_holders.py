"""Who holds memory: the holders scan over a real namespace (numpy arrays, the user's own
containers and objects), bounded in depth and in work."""

import numpy as np

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
