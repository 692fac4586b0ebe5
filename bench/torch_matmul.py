"""PyTorch's f32 matmul rate on this machine's CPU for the training shapes of bloom-560m and the
small shape (medians of repeated products), the reference for docs/PERFORMANCE.md's "Where the
time goes" (issue #19).

    OMP_WAIT_POLICY=PASSIVE tests/fixtures/.venv/bin/python bench/torch_matmul.py
"""
import os
import time

import torch

SHAPES = [  # name, m, k, n, whether the right operand is a stored [out, in] weight transposed
    ("query_key_value forward", 512, 1024, 3072, True),
    ("query_key_value input gradient", 512, 3072, 1024, False),
    ("dense_h_to_4h forward", 512, 1024, 4096, True),
    ("dense_4h_to_h input gradient", 512, 1024, 4096, False),
    ("head block forward", 508, 1024, 8192, True),
    ("head block input gradient", 508, 8192, 1024, False),
    ("small shape query_key_value", 512, 512, 1536, True),
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
