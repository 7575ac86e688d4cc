"""PyTorch side of the GPU comparison (issue 12): the same ops and the same causal streaming
block as `cargo run -p wan --features cuda --example gpu-check`, at the 14B widths, random
bf16 weights, 704*384 (1056 tokens per latent frame), 3 latent frames per block, a full ring of
12 frames (12672 keys) plus 2640 sink keys, cross-attention to 512 text rows.

The block follows Wan's WanAttentionBlock as Live Avatar runs it: per-frame modulation of the
noisy tokens (6 vectors), layer norm without affine, q/k RMS norm over the full width, 3-axis
RoPE on q and k (float32 complex product; the original's per-sample loop in float64 is slower),
the block's K/V written into the ring, the sink keys re-rotated on every call, SDPA over ring +
sink, cross-attention with norm3, tanh-GELU FFN. Audio injectors are left out on both sides.
Prints one JSON line per measurement.
"""
import json
import math

import torch
import torch.nn.functional as F

dev = "cuda"
torch.manual_seed(0)
DIM, HEADS, FFN, HD = 5120, 40, 13824, 128
TOK, FRAMES, RING, SINK, TXT = 1056, 3, 12672, 2640, 512


def timed(fn, reps=10):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def out(**kw):
    print(json.dumps(kw), flush=True)


for dt_name, dt in (("bf16", torch.bfloat16), ("f16", torch.float16)):
    a = torch.randn(3168, 5120, device=dev, dtype=dt)
    b = torch.randn(5120, 13824, device=dev, dtype=dt)
    ms = timed(lambda: a @ b)
    out(check="torch matmul 3168x5120x13824", dtype=dt_name, ms=round(ms, 3),
        tflops=round(2 * 3168 * 5120 * 13824 / ms / 1e9))
    q = torch.randn(1, HEADS, 3168, HD, device=dev, dtype=dt)
    k = torch.randn(1, HEADS, 15312, HD, device=dev, dtype=dt)
    v = torch.randn(1, HEADS, 15312, HD, device=dev, dtype=dt)
    ms = timed(lambda: F.scaled_dot_product_attention(q, k, v))
    out(check="torch sdpa q3168 k15312", dtype=dt_name, ms=round(ms, 3),
        tflops=round(4 * HEADS * 3168 * 15312 * HD / ms / 1e9))
    del a, b, q, k, v

dt = torch.bfloat16


def lin(i, o):
    m = torch.nn.Linear(i, o, device=dev, dtype=dt)
    torch.nn.init.normal_(m.weight, std=i ** -0.5)
    return m


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (lin(DIM, DIM) for _ in range(4))
        self.cq, self.ck, self.cv, self.co = (lin(DIM, DIM) for _ in range(4))
        self.nq = torch.nn.RMSNorm(DIM, eps=1e-6, device=dev, dtype=dt)
        self.nk = torch.nn.RMSNorm(DIM, eps=1e-6, device=dev, dtype=dt)
        self.cnq = torch.nn.RMSNorm(DIM, eps=1e-6, device=dev, dtype=dt)
        self.cnk = torch.nn.RMSNorm(DIM, eps=1e-6, device=dev, dtype=dt)
        self.norm3 = torch.nn.LayerNorm(DIM, eps=1e-6, device=dev, dtype=dt)
        self.f1, self.f2 = lin(DIM, FFN), lin(FFN, DIM)
        self.modulation = torch.nn.Parameter(torch.randn(1, 6, DIM, device=dev, dtype=dt) / DIM ** 0.5)


def rope(x, freqs):
    # x [1, L, H, D] -> rotate pairs by freqs [L, 1, D/2] (complex64)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs).flatten(3).to(x.dtype)


def freqs_for(n):
    ang = torch.rand(n, 1, HD // 2, device=dev) * 6.28
    return torch.polar(torch.ones_like(ang), ang)


blk = Block()
x = torch.randn(1, FRAMES * TOK, DIM, device=dev, dtype=dt)
e = torch.randn(FRAMES, 6, DIM, device=dev, dtype=dt) * 0.1  # per-frame time projection
ctx = torch.randn(1, TXT, DIM, device=dev, dtype=dt)
ring_k = torch.randn(1, RING, HEADS, HD, device=dev, dtype=dt)
ring_v = torch.randn(1, RING, HEADS, HD, device=dev, dtype=dt)
sink_k = torch.randn(1, SINK, HEADS, HD, device=dev, dtype=dt)
sink_v = torch.randn(1, SINK, HEADS, HD, device=dev, dtype=dt)
fq, fs = freqs_for(FRAMES * TOK), freqs_for(SINK)


def modulate(h, m, i_shift, i_scale):
    # per-frame modulation: [frames, tok, dim]
    h = h.view(FRAMES, TOK, DIM)
    return (h * (1 + m[:, i_scale:i_scale + 1]) + m[:, i_shift:i_shift + 1]).view(1, -1, DIM)


def gate(h, m, i):
    return (h.view(FRAMES, TOK, DIM) * m[:, i:i + 1]).view(1, -1, DIM)


def heads(t):
    return t.view(1, -1, HEADS, HD)


@torch.no_grad()
def block_forward(x, write_at=0):
    m = e + blk.modulation
    h = modulate(F.layer_norm(x.float(), (DIM,), eps=1e-6).to(dt), m, 0, 1)
    q = rope(heads(blk.nq(blk.q(h))), fq)
    k = rope(heads(blk.nk(blk.k(h))), fq)
    v = heads(blk.v(h))
    ring_k[:, write_at:write_at + k.shape[1]] = k
    ring_v[:, write_at:write_at + v.shape[1]] = v
    keys = torch.cat([ring_k, rope(sink_k, fs)], 1)
    vals = torch.cat([ring_v, sink_v], 1)
    a = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), vals.transpose(1, 2))
    x = x + gate(blk.o(a.transpose(1, 2).flatten(2)), m, 2)
    c = blk.norm3(x)
    cq = heads(blk.cnq(blk.cq(c))).transpose(1, 2)
    ck = heads(blk.cnk(blk.ck(ctx))).transpose(1, 2)
    cv = heads(blk.cv(ctx)).transpose(1, 2)
    x = x + blk.co(F.scaled_dot_product_attention(cq, ck, cv).transpose(1, 2).flatten(2))
    h = modulate(F.layer_norm(x.float(), (DIM,), eps=1e-6).to(dt), m, 3, 4)
    y = blk.f2(F.gelu(blk.f1(h), approximate="tanh"))
    return x + gate(y, m, 5)


torch.cuda.reset_peak_memory_stats()
ms = timed(lambda: block_forward(x))
out(check="torch causal block 704*384 3 frames (one of 40)", dtype="bf16", ms=round(ms, 3),
    keys=RING + SINK, peak_gib=round(torch.cuda.max_memory_allocated() / 2 ** 30, 2),
    torch=torch.__version__, gpu=torch.cuda.get_device_name())
