#!/usr/bin/env python3
"""Load a safetensors file written by libtblocks with the real reader
(safetensors.torch.load_file and safe_open) and check it against what
test/unit/test_safetensors.c wrote: tensor i of the file is named "t<i>"
(or as listed below), has the shape given, and holds the float32 values
v[j] = (j % 97) * 0.25 - 7.0 (exact in float32). Exit status 0 when every
check passes, 1 otherwise (the C test asserts it).

usage: st_verify.py FILE
"""
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

EXPECTED = {  # name -> shape, as test_safetensors.c writes them
    "h.0.attn.c_attn.weight": (17, 3),
    "bias": (17,),
    "scalar": (),
    "empty": (0, 4),
    "4d": (2, 1, 3, 5),
    "name with \"quotes\", a \\ backslash and \u00e9": (1,),
}
META = {"format": "pt", "written by": "libtblocks", "quote\"key": "line\nbreak \u00e9"}


def main():
    path = sys.argv[1]
    tensors = load_file(path)
    ok = True
    if set(tensors) != set(EXPECTED):
        print("names differ: %r" % sorted(tensors))
        return 1
    for name, shape in EXPECTED.items():
        t = tensors[name]
        n = int(np.prod(shape)) if shape else 1
        want = torch.tensor([(j % 97) * 0.25 - 7.0 for j in range(n)],
                            dtype=torch.float32).reshape(shape)
        if t.dtype != torch.float32 or tuple(t.shape) != shape or not torch.equal(t, want):
            print("tensor %r: dtype %s shape %s differs" % (name, t.dtype, tuple(t.shape)))
            ok = False
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    if meta != META:
        print("metadata differs: %r" % meta)
        ok = False
    print("st_verify: %s: %d tensors, metadata %s" % (path, len(tensors),
                                                      "ok" if ok else "WRONG"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
