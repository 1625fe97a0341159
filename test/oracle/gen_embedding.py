#!/usr/bin/env python3
"""PyTorch references for tb_embedding_* (test/unit/test_embedding.c):
torch.nn.Embedding with repeated ids; cases listed in ``<out>/embedding_cases.txt``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref  # noqa: E402  (exits with a message without torch/numpy)
from tbref import f32_scalar, gen, i32, leaf, uniform  # noqa: E402,F401
import numpy as np  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402,F401


def case_embedding(seed, num, dim, ids):
    g = gen(seed)
    torch.manual_seed(seed)
    emb = torch.nn.Embedding(num, dim, dtype=torch.float32)
    ids_t = torch.tensor(ids, dtype=torch.int64)
    y = emb(ids_t)
    dy = uniform(tuple(y.shape), -1.0, 1.0, g)
    y.backward(dy)
    counts = np.bincount(np.asarray(ids), minlength=num)
    assert counts.max() >= 2, "embedding cases must contain repeated ids"
    return [("ids", ids_t.to(torch.int32)), ("weight", emb.weight), ("dy", dy), ("y", y),
            ("dweight", emb.weight.grad)]


def build_cases():
    """(case name, thunk). Names must match test/unit/test_embedding.c."""
    c = []
    # Embedding with repeated ids.
    ids_a = [3, 0, 16, 3, 3, 7, 0, 16, 1, 3, 9, 9, 2, 16, 0, 5, 3]  # 17 ids, table 17
    c.append(("embedding_17x33_n17", lambda: case_embedding(200, 17, 33, ids_a)))
    ids_b = [int(v) for v in torch.randint(0, 257, (50,), generator=gen(201))] + [256, 0, 256]
    c.append(("embedding_257x50_n53", lambda: case_embedding(202, 257, 50, ids_b)))
    c.append(("embedding_1x3_n3", lambda: case_embedding(203, 1, 3, [0, 0, 0])))
    c.append(("embedding_3x1_n5", lambda: case_embedding(204, 3, 1, [2, 0, 2, 2, 1])))
    return c


if __name__ == "__main__":
    tbref.main("gen_embedding.py", [("embedding_cases.txt", build_cases())])
