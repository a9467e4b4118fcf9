"""A multi-process Keras job, one report: two jax processes on this machine
(``jax.distributed.initialize`` on localhost, two CPU devices each) train a small model
data-parallel under ``%%gpumem``; process 0's record holds all four devices of the job,
gathered from the other process's ledger record, and says so."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
from conftest import KMEM_ENV, PRELUDE, ROOT

pytest.importorskip("jax")
pytest.importorskip("keras")

WORKER = """
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes=2,
                           process_id={process})
ip.run_line_magic("load_ext", "kmem_magic")
cell('''import keras, numpy as np
keras.utils.set_random_seed(0)
layout = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
layout.auto_shard_dataset = False  # each process feeds the same arrays
keras.distribution.set_distribution(layout)
model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(4)])
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.random.default_rng(0).random((512, 16), dtype="float32")
y = np.random.default_rng(1).integers(0, 4, 512)''')
result = cell("%%gpumem --quiet\\nmodel.fit(x, y, batch_size=64, epochs=1, verbose=0)\\nNone")
record = last()
RESULT["ok"] = result.success
RESULT["job"] = dataclasses.asdict(record.job) if record.job else None
RESULT["devices"] = [d.id for d in jax.local_devices()]
RESULT["text"] = __import__("kmem_magic.show.text", fromlist=["x"]).summary(record)
# a job's processes live on after a cell (notebook kernels); here they would exit at once,
# taking their records with them before process 0 has read them
from jax.experimental import multihost_utils
multihost_utils.sync_global_devices("process 0 has gathered")
"""


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_process_zero_shows_every_device_of_a_two_process_data_parallel_job(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in KMEM_ENV}
    env.update(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", KMEM_LEDGER=str(tmp_path / "ledger"),
               XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")])))
    workers = []
    for process in (0, 1):
        script = PRELUDE + textwrap.dedent(WORKER.format(port=port, process=process)) + \
            "\nprint('@@RESULT@@' + json.dumps(RESULT))\n"
        workers.append(subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True))
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        line = next((t for t in out.splitlines() if t.startswith("@@RESULT@@")), None)
        assert line is not None, f"a worker failed:\n{out[-2000:]}\n{err[-4000:]}"
        results.append(json.loads(line[len("@@RESULT@@"):]))
    zero, one = results
    assert zero["ok"] and one["ok"], "both processes trained"
    job = zero["job"]
    assert job["processes"] == 2 and job["missing"] == []
    assert sorted((d["process"], d["id"]) for d in job["devices"]) == \
        [(0, i) for i in zero["devices"]] + [(1, i) for i in one["devices"]]
    assert all(d["platform"] == "cpu" for d in job["devices"])
    assert "job (jax localhost:" in zero["text"] and "2 processes, 4 devices" in zero["text"]
    assert f"process 1 device {one['devices'][-1]} (cpu" in zero["text"]
    assert one["job"] is None, "only process 0 gathers and shows the job"
