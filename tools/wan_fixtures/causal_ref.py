"""Reference for Live Avatar's causal clip loop at the tiny config.

Live Avatar's causal model is not on PyPI, so this drives wan22's modules (patch
and cond embeddings, time/text embeddings, the frame packer, each block's norms,
projections, cross-attention and FFN, the head) with a causal loop of its own,
written from ENGINE.md §2 and the public Live Avatar code:

- one KV ring per denoising step, one clip long, holding RoPE'd keys, written at
  (frame position x tokens per frame) modulo its length;
- a sink of reference-image + frame-packed motion tokens run through the blocks at
  t = 0 once, keeping each layer's keys before RoPE and values; on every call the
  sink keys are rotated with the reference image moved to frame
  30 + max(0, frame - (30 - offset)), the offset pinned per (seed, clip, block);
- per-frame timesteps, zero-timestep modulation for the sink;
- RoPE tables rounded to fp16 (Live Avatar's rope_precompute), applied in f64;
- 4 Euler steps (diffusers' FlowMatchEulerDiscreteScheduler, shift 3) per block,
  step i using ring i.

With audio (causal_audio_tiny_io), each block encodes its own 4 x FPB video frames
of features (73 copies of the first one prefixed, the last FPB latent frames kept) and
runs wan22's own after_transformer_block injection after the blocks that have one.
"""

import os

import torch

SEED_OFFSET = 4
FPB, BLOCKS = 3, 4
MASK64 = (1 << 64) - 1


def _mix(z):
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def sink_rope_offset(seed, clip, block):
    """Same function as wan::causal::sink_rope_offset."""
    return 4 + _mix(_mix(_mix(seed) ^ clip) ^ block) % 27


def causal_fixture(model_s2v, s2v_kwargs, cfg, seed, out, save):
    from safetensors.torch import load_file
    from diffusers import FlowMatchEulerDiscreteScheduler
    import wan.modules.model as wan_model
    import wan.modules.s2v.s2v_utils as s2v_utils

    m = model_s2v.WanModel_S2V(**s2v_kwargs(cfg)).eval()
    m.load_state_dict(load_file(os.path.join(out, "s2v_tiny_weights.safetensors")))
    gen = torch.Generator().manual_seed(seed + SEED_OFFSET)
    job_seed = 42
    h = w = 8
    hp, wp = h // 2, w // 2
    fs = hp * wp
    n_heads = cfg["num_heads"]
    dim = cfg["dim"]
    hd = dim // n_heads
    ref = torch.randn(16, 1, h, w, generator=gen)
    motion = torch.randn(16, 19, h, w, generator=gen)
    context_raw = torch.randn(7, cfg["text_dim"], generator=gen)
    noise = [torch.randn(16, FPB * BLOCKS, h, w, generator=gen) for _ in range(2)]
    cond = [0.1 * torch.randn(16, FPB * BLOCKS, h, w, generator=gen) for _ in range(2)]

    # Audio features per clip (one row per video frame), drawn from their own generator
    # so the inputs of causal_tiny_io stay as they were.
    agen = torch.Generator().manual_seed(seed + SEED_OFFSET + 1)
    audio = [torch.randn(1, 25, cfg["audio_dim"], 4 * FPB * BLOCKS, generator=agen)
             for _ in range(2)]

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    sched.set_timesteps(4, device="cpu")
    timesteps, sigmas = sched.timesteps.float(), sched.sigmas.float()

    def fp16_table(freqs):
        # Live Avatar stores the table as complex32: real and imaginary parts in fp16.
        return torch.complex(freqs.real.half().double(), freqs.imag.half().double())

    def table(grid_sizes, tokens):
        dummy = torch.zeros(1, tokens, n_heads, hd)
        return fp16_table(s2v_utils.rope_precompute(dummy, grid_sizes, m.freqs))

    def rope(x, freqs):  # x [1, L, n, hd]; freqs [1, L, 1, hd/2] complex
        xc = torch.view_as_complex(x.double().reshape(1, x.shape[1], n_heads, -1, 2))
        return torch.view_as_real(xc * freqs).flatten(3).float()

    def grid(f0, f1, fr):
        return [torch.tensor([[f0, 0, 0]]), torch.tensor([[f1, hp, wp]]),
                torch.tensor([[fr, hp, wp]])]

    def time(t):
        e = m.time_embedding(wan_model.sinusoidal_embedding_1d(m.freq_dim, t).float())
        return e, m.time_projection(e).unflatten(1, (6, dim))

    def block_fwd(blk, x, e0_tok, context, attn):
        # e0_tok: [1, L, 6, dim] per-token time projection.
        e = (blk.modulation.unsqueeze(1) + e0_tok).unbind(2)
        y = attn(blk.norm1(x).float() * (1 + e[1]) + e[0])
        x = x + y * e[2]
        x = x + blk.cross_attn(blk.norm3(x), context, None)
        y = blk.ffn(blk.norm2(x).float() * (1 + e[4]) + e[3])
        return x + y * e[5]

    def qkv(sa, x):
        b, s = x.shape[:2]
        return (sa.norm_q(sa.q(x)).view(b, s, n_heads, hd),
                sa.norm_k(sa.k(x)).view(b, s, n_heads, hd),
                sa.v(x).view(b, s, n_heads, hd))

    def sdpa(q, k, v):
        return model_s2v.flash_attention(q=q, k=k, v=v).flatten(2)

    context = m.text_embedding(torch.cat(
        [context_raw, context_raw.new_zeros(cfg["text_len"] - 7, cfg["text_dim"])]).unsqueeze(0))
    io = {"in.ref": ref, "in.motion": motion, "in.context": context_raw,
          "in.job_seed": torch.tensor([float(job_seed)])}
    for c in range(2):
        io[f"in.noise.{c}"], io[f"in.cond.{c}"] = noise[c], cond[c]

    with torch.no_grad():
        # Sink prefill.
        ref_tok = m.patch_embedding(ref.unsqueeze(0)).flatten(2).transpose(1, 2)
        mot_tok, mot_rope = m.frame_packer([motion], 2)
        mot_tok = mot_tok[0]
        ref_rope = table([grid(30, 31, 1)], fs)
        sink_rope0 = torch.cat([ref_rope, fp16_table(mot_rope[0])], dim=1)
        x = torch.cat([ref_tok + m.trainable_cond_mask.weight[1],
                       mot_tok + m.trainable_cond_mask.weight[2]], dim=1)
        _, e0_zero = time(torch.zeros(1))
        sink = []
        for blk in m.blocks:
            kept = {}

            def attn(xin, blk=blk, kept=kept):
                q, k, v = qkv(blk.self_attn, xin)
                kept["k"], kept["v"] = k, v
                return blk.self_attn.o(sdpa(rope(q, sink_rope0), rope(k, sink_rope0), v))
            x = block_fwd(blk, x, e0_zero.unsqueeze(1).expand(1, x.shape[1], 6, dim),
                          context, attn)
            sink.append((kept["k"], kept["v"]))
        for l, (k, v) in enumerate(sink):
            io[f"sink.{l}.k"], io[f"sink.{l}.v"] = k, v
        sink_len = x.shape[1]

        def run(audio):
            """Two clips from the prefilled sink; audio: per-clip features or None."""
            res = {}
            ring_len = FPB * BLOCKS * fs
            rings = [[[torch.zeros(1, ring_len, n_heads, hd) for _ in range(2)]
                      for _ in m.blocks] for _ in range(len(timesteps))]
            frames_done = 0
            for c in range(2):
                outs = []
                for b in range(BLOCKS):
                    frame = frames_done + b * FPB
                    offset = sink_rope_offset(job_seed, c, b)
                    ref_frame = 30 + max(0, frame - (30 - offset))
                    sink_rope = torch.cat(
                        [table([grid(ref_frame, ref_frame + 1, 1)], fs), sink_rope0[:, fs:]], 1)
                    assert sink_rope.shape[1] == sink_len
                    noisy_rope = table([grid(frame, frame + FPB, FPB)], FPB * fs)
                    lat = noise[c][:, b * FPB:(b + 1) * FPB]
                    cnd = cond[c][:, b * FPB:(b + 1) * FPB]
                    start = frame * fs
                    write = start % ring_len
                    visible = ring_len if start >= ring_len else start + FPB * fs
                    if audio is not None:
                        # The block's own 4 * FPB video frames, prefixed with 73 copies
                        # of their first frame, encoded alone; the last FPB latent
                        # frames drive the injectors (no audio state between blocks).
                        win = audio[c][..., 4 * FPB * b:4 * FPB * (b + 1)]
                        win = torch.cat([win[..., :1].repeat(1, 1, 1, 73), win], -1)
                        glob, loc = m.casual_audio_encoder(win)
                        m.audio_emb_global = glob[:, 19:].clone()
                        m.merged_audio_emb = loc[:, 19:]
                        m.original_seq_len = FPB * fs
                    for i, t in enumerate(timesteps):
                        x = (m.patch_embedding(lat.unsqueeze(0)) + m.cond_encoder(cnd.unsqueeze(0)))
                        x = x.flatten(2).transpose(1, 2) + m.trainable_cond_mask.weight[0]
                        e, e0 = time(t.repeat(FPB))
                        e0_tok = e0.repeat_interleave(fs, dim=0).unsqueeze(0)
                        for l, blk in enumerate(m.blocks):
                            ring = rings[i][l]

                            def attn(xin, blk=blk, ring=ring, l=l):
                                q, k, v = qkv(blk.self_attn, xin)
                                q, k = rope(q, noisy_rope), rope(k, noisy_rope)
                                ring[0][:, write:write + FPB * fs] = k
                                ring[1][:, write:write + FPB * fs] = v
                                keys = torch.cat([ring[0][:, :visible],
                                                  rope(sink[l][0], sink_rope)], 1)
                                vals = torch.cat([ring[1][:, :visible], sink[l][1]], 1)
                                return blk.self_attn.o(sdpa(q, keys, vals))
                            x = block_fwd(blk, x, e0_tok, context, attn)
                            if audio is not None:
                                x = m.after_transformer_block(l, x)
                        y = torch.cat([m.head(x[:, f * fs:(f + 1) * fs], e[f:f + 1])
                                       for f in range(FPB)], dim=1)
                        vel = m.unpatchify(y, torch.tensor([[FPB, hp, wp]]))[0]
                        if i == 0 and b in (0, 1):
                            res[f"clip{c}.block{b}.step0.velocity"] = vel
                        lat = lat + (sigmas[i + 1] - sigmas[i]) * vel
                    outs.append(lat)
                res[f"clip{c}.latents"] = torch.cat(outs, dim=1)
                if c == 0:
                    for l in range(len(m.blocks)):
                        res[f"clip0.ring.step0.{l}.k"] = rings[0][l][0].clone()
                frames_done += FPB * BLOCKS
            return res

        io.update(run(None))
        # Inputs other than the audio are causal_tiny_io's; only the audio and the
        # outputs are stored here.
        audio_io = {f"in.audio.{c}": a for c, a in enumerate(audio)}
        audio_io.update({k: v for k, v in run(audio).items() if ".ring." not in k})
    save(io, os.path.join(out, "causal_tiny_io.safetensors"))
    save(audio_io, os.path.join(out, "causal_audio_tiny_io.safetensors"))
