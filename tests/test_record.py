"""The cell record as data: labels, unknowns, exports and a round trip."""

import json

from kmem_magic.backends import label
from kmem_magic.measure import Measurement
from kmem_magic.record import CellRecord, Figures, Peak
from kmem_magic.show.export import timeline_csv
from kmem_magic.show.text import summary


def test_record_round_trips_through_json():
    m = Measurement(interval_s=0.01).start()
    block = bytearray(20 * 2**20)
    record = m.finish()
    del block
    again = CellRecord.from_json(record.to_json())
    assert again.to_dict() == record.to_dict()
    assert again.peak("host") == record.peak("host")


def test_unknown_before_or_after_gives_unknown_left_behind():
    figures = Figures(before={"process": None, "jax": 10}, after={"process": 5, "jax": 30})
    assert figures.left_behind("process") is None
    assert figures.left_behind("jax") == 20


def test_csv_has_one_row_per_sample_with_its_source():
    m = Measurement(interval_s=0.01).start()
    record = m.finish()
    rows = timeline_csv(record).splitlines()
    assert rows[0] == "t_s,series,source,device,bytes"
    assert all(row.split(",")[2] == "host" for row in rows[1:])
    assert len(rows) - 1 == len(record.timeline.find("host").t_s)


def test_every_figure_is_labelled_with_its_source():
    assert label("device") == "device used (NVML)"
    assert label("process") == "this process (NVML)"
    assert label("jax") == "jax allocator"
    assert label("host") == "host RSS"
    record = Measurement().start().finish()
    assert "host RSS" in summary(record)
    assert "(exact" in summary(record) or "(sampled" in summary(record), "and how it was got"
    json.loads(record.to_json())
    assert Peak(None, False).bytes is None


def test_importing_kmem_magic_is_cheap(fresh):
    result = fresh("""
        import sys
        import kmem_magic
        RESULT["heavy"] = sorted(m for m in ("tensorflow", "jax", "torch", "keras", "matplotlib",
                                             "ipywidgets", "pynvml") if m in sys.modules)
        kmem_magic.load_ipython_extension(ip)
        RESULT["after_load"] = sorted(m for m in ("tensorflow", "jax", "torch", "keras",
                                                  "matplotlib", "ipywidgets") if m in sys.modules)
    """)
    assert result["heavy"] == [], "no framework, NVML, matplotlib or ipywidgets at import"
    assert result["after_load"] == [], "loading the extension starts or imports no framework"


def test_holders_survive_the_json_round_trip():
    from kmem_magic.record import CellRecord, Holder

    record = CellRecord(3, "", 0.5, None, "growth", 0.1,
                        holders=(Holder("held", "TensorFlow tensor", 2**28),))
    assert CellRecord.from_json(record.to_json()).holders == record.holders
