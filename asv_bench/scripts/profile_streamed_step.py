"""Line profile of the streamed KSL step in AdaGram's own state (d = 1e6, r = 5).

Needs ``pip install line_profiler``. Usage: ``python asv_bench/scripts/profile_streamed_step.py
published|symmetric``; prints the lines of ``_step`` that took over 4 ms in 20 steps.
"""

import io
import sys

import numpy as np
from line_profiler import LineProfiler

import lowrank_precond.linalg.streaming as streaming
from lowrank_precond import preconditioners as pc

if __name__ == "__main__":
    direction = sys.argv[1] if len(sys.argv) > 1 else "published"
    d, r = 1_000_000, 5
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(d) for _ in range(30)]
    pre = pc.adagram(rank=r, direction=direction)
    state = pre.init(grads[0])
    for g in grads[:10]:
        _, state = pre.update(g, state)
    lp = LineProfiler(streaming._step)
    lp.enable()
    for g in grads[10:]:
        _, state = pre.update(g, state)
    lp.disable()
    buf = io.StringIO()
    lp.print_stats(stream=buf, output_unit=1e-3)
    for line in buf.getvalue().splitlines():
        f = line.split()
        timed = len(f) > 5 and f[0].isdigit() and f[2].replace(".", "").isdigit()
        if line.startswith("Total") or (timed and float(f[2]) > 4):
            print(line[:150])
