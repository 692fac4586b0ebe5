"""PyTorch's f32 matmul rate on this machine's CPU for the training shapes of the three shapes of
issue #19 (bench/shapes/matmuls.txt; medians of repeated products), the reference for
docs/PERFORMANCE.md's "Where the time goes". Ember's side: the matmul_rate example of
ember-shaders, on the same list.

    OMP_WAIT_POLICY=PASSIVE tests/fixtures/.venv/bin/python bench/torch_matmul.py
"""
import os
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# name, m, k, n, whether the right operand is a stored [out, in] weight transposed
SHAPES = [
    (f[0], int(f[1]), int(f[2]), int(f[3]), f[4] == "1")
    for f in (line.split() for line in open(os.path.join(HERE, "shapes", "matmuls.txt")))
    if f and not f[0].startswith("#")
]

torch.set_num_threads(os.cpu_count())
for name, m, k, n, transposed in SHAPES:
    a = torch.randn(m, k)
    b = torch.randn(n, k) if transposed else torch.randn(k, n)
    times = []
    for _ in range(9):
        start = time.perf_counter()
        a @ (b.t() if transposed else b)
        times.append(time.perf_counter() - start)
    t = sorted(times)[len(times) // 2]
    print(f"{name:<32} [{m} x {k}] x [{k} x {n}]  {t * 1e3:6.1f} ms  {2 * m * n * k / t / 1e9:5.0f} GFLOP/s")
