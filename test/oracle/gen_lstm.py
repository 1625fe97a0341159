#!/usr/bin/env python3
"""PyTorch references for tb_lstm_* (test/unit/test_lstm.c): torch.nn.LSTM
(batch_first) in float32, and the same module in float64 (``<name>_f64``),
forward and backward through autograd; variable lengths through
pack_padded_sequence(enforce_sorted=False) / pad_packed_sequence(total_length=T).
Cases listed in ``<out>/lstm_cases.txt``.

Per case: config (layers, bidirectional, hidden), inputs x, lengths (absent:
every row has all T steps), h0 and c0 (absent: zeros), the weights under
their PyTorch names, dy, dh_n and dc_n (absent: no gradient flows from
them; the C test passes NULL); results y, h_n, c_n, dx, dh0, dc0 (when h0 is
given) and d<name> for every weight. ``names`` holds the module's
``_flat_weights_names`` as bytes (int32 codes, names separated by '\\n'), so
the C test compares tb_lstm_params() with PyTorch's own list.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tbref  # noqa: E402  (exits with a message without torch/numpy)
from tbref import gen, i32, leaf, uniform  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402


def names_tensor(names):
    return np.frombuffer("\n".join(names).encode("ascii"), dtype=np.uint8).astype(np.int32)


def run(mod, x, lengths, h0, c0, dy, dhn, dcn, T):
    """Forward and backward; returns y, h_n, c_n, dx, dh0, dc0, grads."""
    xl = leaf(x)
    hx = None
    if h0 is not None:
        h0l, c0l = leaf(h0), leaf(c0)
        hx = (h0l, c0l)
    if lengths is not None:
        packed = pack_padded_sequence(xl, torch.tensor(lengths, dtype=torch.int64),
                                      batch_first=True, enforce_sorted=False)
        out, (hn, cn) = mod(packed, hx)
        y, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    else:
        y, (hn, cn) = mod(xl, hx)
    outs, grads_in = [y], [dy]
    if dhn is not None:
        outs.append(hn)
        grads_in.append(dhn)
    if dcn is not None:
        outs.append(cn)
        grads_in.append(dcn)
    torch.autograd.backward(outs, grads_in)
    grads = {n: getattr(mod, n).grad for n in mod._flat_weights_names}
    return (y, hn, cn, xl.grad, h0l.grad if h0 is not None else None,
            c0l.grad if h0 is not None else None, grads)


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def case_lstm(seed, L, bidir, B, T, fin, H, lengths, init_state, dh, dc):
    g = gen(seed)
    torch.manual_seed(seed)  # nn.LSTM's default init draws from the global RNG
    D = 2 if bidir else 1
    mod = torch.nn.LSTM(fin, H, num_layers=L, bidirectional=bidir, batch_first=True,
                        dtype=torch.float32)
    names = list(mod._flat_weights_names)
    # PyTorch's documented order, which tb_lstm_params() follows.
    want = []
    for k in range(L):
        for sfx in ([""] + (["_reverse"] if bidir else [])):
            want += ["weight_ih_l%d%s" % (k, sfx), "weight_hh_l%d%s" % (k, sfx),
                     "bias_ih_l%d%s" % (k, sfx), "bias_hh_l%d%s" % (k, sfx)]
    assert names == want, names
    assert [n for n, _ in mod.named_parameters()] == names
    x = uniform((B, T, fin), -1.0, 1.0, g)
    if lengths is not None:
        # Padding holds garbage: it must not reach anything.
        for b, n in enumerate(lengths):
            x[b, n:, :] = 1e3
    h0 = c0 = None
    if init_state:
        h0 = uniform((L * D, B, H), -1.0, 1.0, g)
        c0 = uniform((L * D, B, H), -1.0, 1.0, g)
    dy = uniform((B, T, D * H), -1.0, 1.0, g)
    dhn = uniform((L * D, B, H), -1.0, 1.0, g) if dh else None
    dcn = uniform((L * D, B, H), -1.0, 1.0, g) if dc else None

    res = run(mod, x, lengths, h0, c0, dy, dhn, dcn, T)
    mod64 = torch.nn.LSTM(fin, H, num_layers=L, bidirectional=bidir, batch_first=True,
                          dtype=torch.float64)
    with torch.no_grad():
        for n in names:
            getattr(mod64, n).copy_(getattr(mod, n).double())
    d64 = lambda t: None if t is None else t.double()  # noqa: E731
    res64 = run(mod64, x.double(), lengths, d64(h0), d64(c0), dy.double(), d64(dhn), d64(dcn), T)

    t = [("layers", i32(L)), ("bidirectional", i32(int(bidir))), ("hidden", i32(H)),
         ("names", names_tensor(names)), ("x", x)]
    if lengths is not None:
        t.append(("lengths", np.array(lengths, dtype=np.int32)))
    if init_state:
        t += [("h0", h0), ("c0", c0)]
    for n in names:
        t.append((n, getattr(mod, n).detach()))
    t.append(("dy", dy))
    if dh:
        t.append(("dh_n", dhn))
    if dc:
        t.append(("dc_n", dcn))
    labels = ["y", "h_n", "c_n", "dx", "dh0", "dc0"]
    for suffix, r in (("", res), ("_f64", res64)):
        for lab, v in zip(labels, r[:6]):
            if v is not None:
                t.append((lab + suffix, f32(v)))
        for n in names:
            t.append(("d" + n + suffix, f32(r[6][n])))
    return t


# (L, bidirectional, B, T, in, H, lengths or None, h0/c0, dh_n, dc_n)
CASES = [
    (1, False, 1, 1, 1, 1, None, False, False, False),
    (1, False, 3, 7, 3, 5, [7, 1, 4], True, True, True),
    (1, True, 3, 7, 17, 5, [1, 7, 3], False, True, True),
    (1, True, 1, 17, 3, 33, None, True, True, True),
    (1, False, 3, 17, 17, 17, [9, 3, 12], True, True, False),
    (2, True, 3, 17, 3, 17, [5, 17, 1], True, True, True),
    (2, False, 1, 2, 17, 33, None, True, False, False),
    (2, True, 3, 2, 1, 5, [2, 1, 2], False, False, False),
    (2, False, 3, 17, 17, 33, [9, 3, 12], True, False, True),
    (3, True, 3, 17, 17, 33, [17, 2, 9], True, True, True),
    (3, False, 3, 7, 1, 1, [3, 7, 1], False, False, False),
    (3, True, 1, 1, 3, 17, None, True, True, True),
    (3, True, 3, 7, 3, 5, None, False, True, False),
]


def case_name(c):
    L, bidir, B, T, fin, H, lengths, st, dh, dc = c
    return "lstm_l%d%s_b%dt%di%dh%d%s%s%s%s" % (
        L, "bi" if bidir else "uni", B, T, fin, H, "_lens" if lengths else "",
        "_h0" if st else "", "_dhn" if dh else "", "_dcn" if dc else "")


def build_cases():
    """(case name, thunk). Names must match test/unit/test_lstm.c."""
    return [(case_name(c), lambda c=c, i=i: case_lstm(300 + i, *c)) for i, c in enumerate(CASES)]


if __name__ == "__main__":
    tbref.main("gen_lstm.py", [("lstm_cases.txt", build_cases())])
