"""Which allocator variable turns on PyTorch's expandable segments in this torch build.

    python benchmarks/torch_alloc_conf.py      (on a GPU machine)

torch 2.9 renamed PYTORCH_CUDA_ALLOC_CONF to PYTORCH_ALLOC_CONF, and 2.9.1 ignored
expandable_segments under the new name (pytorch #183387). Each variable is tried in a fresh
process; a segment made with expandable segments says so in the allocator's snapshot.
"""

import os
import subprocess
import sys

CHILD = ("import torch; x = torch.ones(1 << 20, device='cuda'); "
         "print(torch.__version__, any(s.get('is_expandable') for s in torch.cuda.memory._snapshot()['segments']))")

for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF", None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")}
    if name:
        env[name] = "expandable_segments:True"
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env)
    print(f"{name or 'neither'}: torch, expandable = {out.stdout.strip()} {out.stderr.strip()[-300:]}")
