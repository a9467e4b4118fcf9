"""Why MemoryCallback reads JAX's allocator on the training loop's thread.

    python benchmarks/jax_memory_stats_threads.py        (a GPU with JAX)

One jitted 8192x8192 matmul step is queued 0, 1, 10 and 40 times; then JAX's
``Device.memory_stats()``, NVML's device memory used and ``jax.live_arrays()`` are read, first on
the thread that queued the steps (does the read wait for the GPU?), then from a second thread
while the first one queues 40 steps (does the read stall the dispatching thread?). Printed: each
read's time, the time to drain the rest of the queue, and how long the 40 dispatches took.
"""

from __future__ import annotations

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp

    from kmem_magic import _nvml

    x = jnp.ones((8192, 8192))
    step = jax.jit(lambda a: (a @ a) * 1e-4)
    step(x).block_until_ready()
    start = time.perf_counter()
    step(x).block_until_ready()
    print(f"one step: {1e3 * (time.perf_counter() - start):.2f} ms")
    device, gpu = jax.local_devices()[0], _nvml.devices()[0]
    reads = {"memory_stats": device.memory_stats, "nvml": lambda: _nvml.memory_used(gpu),
             "live_arrays": lambda: sum(a.nbytes for a in jax.live_arrays())}
    for name, read in reads.items():
        for queued in (0, 1, 10, 40):
            outputs = [step(x) for _ in range(queued)]
            start = time.perf_counter()
            read()
            took = time.perf_counter() - start
            if outputs:
                outputs[-1].block_until_ready()
            rest = time.perf_counter() - start - took
            print(f"{name:13s} on the same thread, {queued:2d} steps queued: read "
                  f"{1e3 * took:7.3f} ms, rest of the queue {1e3 * rest:7.2f} ms")
    for name, read in reads.items():
        took = []

        def other_thread():
            time.sleep(0.05)
            start = time.perf_counter()
            read()
            took.append(time.perf_counter() - start)

        thread = threading.Thread(target=other_thread)
        thread.start()
        start = time.perf_counter()
        outputs = [step(x) for _ in range(40)]
        dispatch = time.perf_counter() - start
        outputs[-1].block_until_ready()
        thread.join()
        print(f"{name:13s} from another thread while 40 steps are queued: read "
              f"{1e3 * took[0]:.3f} ms; the 40 dispatches took {1e3 * dispatch:.1f} ms")


if __name__ == "__main__":
    main()
