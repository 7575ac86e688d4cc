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

With `--dir DIR` (issue 24) it instead runs the block on the weights and inputs that
`tch-check write-block DIR` wrote (bf16 safetensors, read here without the safetensors
package), computing exactly what wan's causal layer computes (`causal_loop::layer_forward`
without an audio injector, all in bf16 as the LibTorch backend runs it), times it (CUDA events
or, on the CPU, wall clock; 3 warm-ups, median of `--reps`), and compares it with the outputs
the Rust programs wrote (`--compare NAME=FILE`): one JSON line per figure, relative L2 against
this reference. `--device cpu` runs the same at the small size on a machine without a GPU.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F


def read_safetensors(path, device, dtype=None):
    """All tensors of a safetensors file (BF16/F32 only), as torch tensors on `device`."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    base = 8 + n
    kinds = {"BF16": torch.bfloat16, "F32": torch.float32}
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = bytearray(data[base + start:base + end])
        t = torch.frombuffer(raw, dtype=kinds[info["dtype"]]).reshape(info["shape"])
        out[key] = t.to(device=device, dtype=dtype or t.dtype)
    return out


def file_mode(argv):
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--compare", action="append", default=[])
    a = ap.parse_args(argv)
    dev = a.device
    w16 = read_safetensors(f"{a.dir}/block-weights.safetensors", dev, torch.bfloat16)
    i16 = read_safetensors(f"{a.dir}/block-inputs.safetensors", dev, torch.bfloat16)
    ref32 = make_block({k: v.float() for k, v in w16.items()},
                       {k: v.float() for k, v in i16.items()})().float()
    block = make_block(w16, i16)
    run(a, dev, block, ref32, i16)


def make_block(w, i):
    """The causal layer on weights `w` and inputs `i` (both in the dtype to compute in)."""
    heads_n = i["ring.k"].shape[2]
    frames = i["e"].shape[0]
    eps = 1e-6

    def lin(x, name):
        return F.linear(x, w[name + ".weight"], w[name + ".bias"])

    def rms(x, name):
        ms = x.pow(2).mean(-1, keepdim=True)
        return x * (ms + eps).sqrt().reciprocal() * w[name + ".weight"]

    def layer_norm(x):
        mean = x.mean(-1, keepdim=True)
        c = x - mean
        return c * (c.pow(2).mean(-1, keepdim=True) + eps).sqrt().reciprocal()

    def heads(x):
        return x.reshape(x.shape[0], x.shape[1], heads_n, -1)

    def rope(x, cos, sin):
        b, l, h, d = x.shape
        x = x.reshape(b, l, h, d // 2, 2)
        re, im = x[..., 0], x[..., 1]
        return torch.stack([re * cos - im * sin, re * sin + im * cos], -1).reshape(b, l, h, d)

    def sdpa(q, k, v):
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return o.transpose(1, 2).flatten(2)

    def per_frame(x, f):
        parts = x.chunk(frames, 1)
        return torch.cat([f(p, fi) for fi, p in enumerate(parts)], 1)

    ring_k, ring_v = i["ring.k"].clone(), i["ring.v"].clone()
    m = i["e"] + w["modulation"]  # [frames, 6, dim]

    def row(fi, r):
        return m[fi:fi + 1, r:r + 1]

    @torch.no_grad()
    def block():
        x = i["x"]
        xin = per_frame(layer_norm(x), lambda p, fi: p * (row(fi, 1) + 1.0) + row(fi, 0))
        q = rope(heads(rms(lin(xin, "self_attn.q"), "self_attn.norm_q")), i["rope.cos"], i["rope.sin"])
        k = rope(heads(rms(lin(xin, "self_attn.k"), "self_attn.norm_k")), i["rope.cos"], i["rope.sin"])
        v = heads(lin(xin, "self_attn.v"))
        n = k.shape[1]
        ring_k[:, :n] = k
        ring_v[:, :n] = v
        keys = torch.cat([ring_k, rope(i["sink.k"], i["sink_rope.cos"], i["sink_rope.sin"])], 1)
        vals = torch.cat([ring_v, i["sink.v"]], 1)
        a = lin(sdpa(q, keys, vals), "self_attn.o")
        x = x + per_frame(a, lambda p, fi: p * row(fi, 2))
        c = layer_norm(x) * w["norm3.weight"] + w["norm3.bias"]
        ctx = i["context"]
        cq = heads(rms(lin(c, "cross_attn.q"), "cross_attn.norm_q"))
        ck = heads(rms(lin(ctx, "cross_attn.k"), "cross_attn.norm_k"))
        cv = heads(lin(ctx, "cross_attn.v"))
        x = x + lin(sdpa(cq, ck, cv), "cross_attn.o")
        fin = per_frame(layer_norm(x), lambda p, fi: p * (row(fi, 4) + 1.0) + row(fi, 3))
        y = lin(F.gelu(lin(fin, "ffn.0"), approximate="tanh"), "ffn.2")
        return x + per_frame(y, lambda p, fi: p * row(fi, 5))

    block.ring_keys = ring_k.shape[1]
    return block


def run(a, dev, block, ref32, i):
    def timed(fn, reps):
        import time
        for _ in range(3):
            fn()
        ts = []
        for _ in range(reps):
            if dev == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                fn()
                e.record()
                torch.cuda.synchronize()
                ts.append(s.elapsed_time(e))
            else:
                t = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t) * 1e3)
        ts.sort()
        return ts[len(ts) // 2]

    ref = block().float()
    ring_keys = block.ring_keys
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms = timed(block, a.reps)
    card = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(json.dumps({
        "check": "block", "backend": "pytorch bf16", "device": card, "dim": int(i["x"].shape[2]),
        "queries": int(i["x"].shape[1]), "keys": int(ring_keys + i["sink.k"].shape[1]),
        "ms": round(ms, 3), "reps": a.reps, "torch": torch.__version__,
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if dev == "cuda" else None,
    }), flush=True)

    def rel(x, y):
        return ((x - y).norm() / y.norm()).item()

    # The bf16 noise floor: PyTorch's own bf16 block against the same block in f32.
    print(json.dumps({"check": "block parity", "backend": "pytorch bf16", "against": "pytorch f32",
                      "device": card, "rel_l2": rel(ref, ref32)}), flush=True)
    for spec in a.compare:
        name, path = spec.split("=", 1)
        try:
            got = read_safetensors(path, dev)["out"].float()
        except OSError as err:
            print(json.dumps({"check": "block parity", "backend": name, "error": str(err)}), flush=True)
            continue
        print(json.dumps({
            "check": "block parity", "backend": name, "against": "pytorch bf16", "device": card,
            "rel_l2": rel(got, ref), "rel_l2_vs_f32": rel(got, ref32),
            "max_abs_diff": (got - ref).abs().max().item(),
            "ref_max_abs": ref.abs().max().item(), "finite": bool(torch.isfinite(got).all()),
        }), flush=True)


if "--dir" in sys.argv:
    file_mode(sys.argv[1:])
    sys.exit(0)

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
