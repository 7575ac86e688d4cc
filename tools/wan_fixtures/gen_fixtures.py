#!/usr/bin/env python3
"""Parity fixtures for the `wan` crate, produced by the reference Python code.

Runs the reference modules of wan22 2.2.11 (the official Wan2.2 code on PyPI) on
the CPU in f32, at a tiny configuration with seeded random weights, and writes
weights, inputs, intermediate activations and outputs to small safetensors files
under wan/tests/fixtures/. It also builds the real 14B S2V model on torch's meta
device (shapes only, nothing allocated) and writes its parameter names and shapes.

Usage (from the repository root, in the venv described in requirements.txt):
    python tools/wan_fixtures/gen_fixtures.py [--out wan/tests/fixtures]

Running it twice gives identical bytes: every random tensor comes from one seeded
generator in a fixed order, torch runs single-threaded, and the files carry no
timestamps.
"""

import argparse
import importlib.util
import json
import os
import sys
import types

import torch
import torch.nn.functional as F

SEED = 20261126


def import_wan22():
    """Imports wan22's model modules without running its package __init__ files,
    which pull in video/image I/O packages (decord, cv2, torchvision) and librosa
    that the DiT does not need. Each package is registered as an empty module whose
    __path__ points at the installed folder, so submodules import normally."""
    spec = importlib.util.find_spec("wan")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("wan22 is not installed (see tools/wan_fixtures/requirements.txt)")
    root = list(spec.submodule_search_locations)[0]
    for name, sub in [("wan", ""), ("wan.modules", "modules"),
                      ("wan.modules.s2v", "modules/s2v"),
                      ("wan.distributed", "distributed")]:
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(root, sub)]
        sys.modules[name] = pkg
    import wan.modules.model as model
    import wan.modules.s2v.model_s2v as model_s2v

    def sdpa(q, k, v, k_lens=None, window_size=(-1, -1), **_):
        # wan22's flash_attention takes [B, L, N, D] and needs CUDA + half
        # precision; this is the same attention in f32 on the CPU. The batch here
        # is always 1 with no padding, so k_lens (when given) covers every key.
        if k_lens is not None:
            assert int(k_lens.max()) == k.shape[1] and int(k_lens.min()) == k.shape[1]
        assert tuple(window_size) == (-1, -1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2).float(), k.transpose(1, 2).float(), v.transpose(1, 2).float())
        return out.transpose(1, 2).contiguous()

    model.flash_attention = sdpa
    model_s2v.flash_attention = sdpa
    return model, model_s2v


def s2v_kwargs(cfg):
    """Keyword arguments of WanModel_S2V for a shape config, with the behaviour flags
    of wan22 `wan/configs/wan_s2v_14B.py`."""
    return dict(
        cond_dim=cfg["cond_dim"], audio_dim=cfg["audio_dim"],
        num_audio_token=cfg["num_audio_token"], enable_adain=True,
        adain_mode="attn_norm", audio_inject_layers=cfg["audio_inject_layers"],
        zero_init=True, zero_timestep=True, enable_motioner=False,
        add_last_motion=True, enable_tsm=False, trainable_token_pos_emb=False,
        enable_framepack=True, framepack_drop_mode="padd", model_type="s2v",
        patch_size=(1, 2, 2), text_len=cfg["text_len"], in_dim=16,
        dim=cfg["dim"], ffn_dim=cfg["ffn_dim"], freq_dim=cfg["freq_dim"],
        text_dim=cfg["text_dim"], out_dim=16, num_heads=cfg["num_heads"],
        num_layers=cfg["num_layers"], window_size=(-1, -1), qk_norm=True,
        cross_attn_norm=True, eps=1e-6)


CFG_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, text_dim=4096,
               text_len=512, freq_dim=256, audio_dim=1024, num_audio_token=4,
               audio_inject_layers=[0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39],
               cond_dim=16)
# Must equal `S2vConfig::tiny()` in wan/src/config.rs.
CFG_TINY = dict(dim=64, ffn_dim=128, num_heads=4, num_layers=4, text_dim=32,
                text_len=16, freq_dim=32, audio_dim=32, num_audio_token=4,
                audio_inject_layers=[0, 2, 3], cond_dim=16)


def write_key_list(model_s2v, out):
    with torch.device("meta"):
        m = model_s2v.WanModel_S2V(**s2v_kwargs(CFG_14B))
    params = [[k, list(v.shape)] for k, v in m.state_dict().items()]
    doc = {"model": "WanModel_S2V", "source": "wan22==2.2.11 wan/modules/s2v/model_s2v.py",
           "config": "wan/configs/wan_s2v_14B.py", "count": len(params), "params": params}
    with open(os.path.join(out, "s2v_14b_params.json"), "w") as f:
        json.dump(doc, f, indent=0)
        f.write("\n")
    return len(params)


def write_vae_key_list(out):
    import wan.modules.vae2_1 as vae2_1
    with torch.device("meta"):
        m = vae2_1.WanVAE_(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                           attn_scales=[], temperal_downsample=[False, True, True],
                           dropout=0.0)
    params = [[k, list(v.shape)] for k, v in m.state_dict().items()]
    doc = {"model": "WanVAE_", "source": "wan22==2.2.11 wan/modules/vae2_1.py (_video_vae)",
           "count": len(params), "params": params}
    with open(os.path.join(out, "vae21_params.json"), "w") as f:
        json.dump(doc, f, indent=0)
        f.write("\n")
    return len(params)


def randomise(module, gen):
    """Seeded weights in state_dict order; norm gains near 1 so the activations stay
    in a range where f32 differences mean something."""
    with torch.no_grad():
        for name, p in module.state_dict().items():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith(("norm_q.weight", "norm_k.weight", "norm3.weight", "gamma")):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def save(tensors, path):
    from safetensors.torch import save_file
    save_file({k: v.detach().float().clone().contiguous() for k, v in sorted(tensors.items())}, path)


def trunk_fixture(model_s2v, out):
    gen = torch.Generator().manual_seed(SEED)
    m = model_s2v.WanModel_S2V(**s2v_kwargs(CFG_TINY)).eval()
    randomise(m, gen)
    save(m.state_dict(), os.path.join(out, "s2v_tiny_weights.safetensors"))

    f, h, w = 3, 8, 8
    noisy = torch.randn(16, f, h, w, generator=gen)
    ref = torch.randn(16, 1, h, w, generator=gen)
    cond = torch.randn(16, f, h, w, generator=gen)
    context = torch.randn(7, CFG_TINY["text_dim"], generator=gen)
    motion = torch.randn(16, 19, h, w, generator=gen)
    audio = torch.randn(1, 25, CFG_TINY["audio_dim"], 4 * f, generator=gen)
    t = torch.tensor([700.0])

    # The trunk: WanModel_S2V.forward with the audio injection and the motion tokens
    # switched off (the wan crate does not port them yet). Everything else is the
    # reference's own forward code.
    m.after_transformer_block = lambda idx, hidden: hidden
    m.inject_motion = lambda x, seq_lens, rope, mask, *a, **k: (x, seq_lens, rope, mask)

    caught = {}

    def hook(name, with_kwargs=False):
        def fn(mod, args, kwargs_or_out, out=None):
            if with_kwargs:
                caught[name] = (args, kwargs_or_out, out)
            else:
                caught[name] = (args, kwargs_or_out)
        return fn

    hs = [m.blocks[0].register_forward_hook(hook("block0", True), with_kwargs=True),
          m.blocks[0].self_attn.register_forward_hook(hook("self_attn0")),
          m.head.register_forward_hook(hook("head")),
          m.text_embedding.register_forward_hook(hook("text")),
          m.time_embedding.register_forward_hook(hook("time")),
          m.time_projection.register_forward_hook(hook("time_proj"))]
    with torch.no_grad():
        vel = m(x=[noisy], t=t, context=[context], seq_len=None, ref_latents=[ref],
                motion_latents=[motion], cond_states=[cond], audio_input=audio,
                motion_frames=[73, 19], add_last_motion=2, drop_motion_frames=False)[0]
    for hnd in hs:
        hnd.remove()

    b_args, b_kwargs, b_out = caught["block0"]
    e0, seg = b_kwargs["e"]
    sa_args, sa_out = caught["self_attn0"]
    head_args, head_out = caught["head"]
    io = {
        "in.noisy": noisy, "in.ref": ref, "in.cond": cond, "in.context": context,
        "in.t": t,
        "time.e": caught["time"][1], "time.e0": caught["time_proj"][1].unflatten(1, (6, CFG_TINY["dim"])),
        "text.out": caught["text"][1],
        "block0.in": b_args[0], "block0.e0": e0, "block0.context": b_kwargs["context"],
        "block0.out": b_out,
        "block0.noisy_tokens": torch.tensor([float(seg)]),
        "self_attn0.in": sa_args[0], "self_attn0.out": sa_out,
        "head.in": head_args[0], "head.e": head_args[1], "head.out": head_out,
        "trunk.velocity": vel,
    }
    save(io, os.path.join(out, "s2v_tiny_io.safetensors"))

    # Same model and inputs with the audio injectors on (only the motion tokens off).
    del m.after_transformer_block
    caught.clear()
    hs = [m.audio_injector.injector_adain_layers[0].register_forward_hook(
              hook("adain0", True), with_kwargs=True),
          m.audio_injector.injector[0].register_forward_hook(hook("injector0", True),
                                                            with_kwargs=True)]
    with torch.no_grad():
        vel = m(x=[noisy], t=t, context=[context], seq_len=None, ref_latents=[ref],
                motion_latents=[motion], cond_states=[cond], audio_input=audio,
                motion_frames=[73, 19], add_last_motion=2, drop_motion_frames=False)[0]
    for hnd in hs:
        hnd.remove()
    a_args, a_kwargs, a_out = caught["adain0"]
    i_args, i_kwargs, i_out = caught["injector0"]
    io = {
        "in.audio": audio,
        "audio.global": m.audio_emb_global, "audio.local": m.merged_audio_emb,
        "adain0.in": a_args[0], "adain0.temb": a_kwargs["temb"], "adain0.out": a_out,
        "injector0.in": i_kwargs["x"], "injector0.context": i_kwargs["context"],
        "injector0.out": i_out,
        "velocity": vel,
    }
    save(io, os.path.join(out, "s2v_tiny_audio_io.safetensors"))

    # The reference forward with nothing switched off: audio and frame-packed motion.
    del m.inject_motion
    packed = {}

    def keep_tokens(mod, args, result):
        packed["tokens"] = result[0][0]  # returns None: the output is left as it is

    hnd = m.frame_packer.register_forward_hook(keep_tokens)
    with torch.no_grad():
        vel = m(x=[noisy], t=t, context=[context], seq_len=None, ref_latents=[ref],
                motion_latents=[motion], cond_states=[cond], audio_input=audio,
                motion_frames=[73, 19], add_last_motion=2, drop_motion_frames=False)[0]
    hnd.remove()
    save({"in.motion": motion, "packed.tokens": packed["tokens"], "velocity": vel},
         os.path.join(out, "s2v_tiny_full_io.safetensors"))


def vae_block_fixture(out):
    """A tiny Wan 2.1 VAE with seeded weights, and three of its layers run on their
    own without a feature cache: a residual block with a shortcut (8 -> 16 channels),
    the middle attention block and the head's RMS norm."""
    import wan.modules.vae2_1 as vae2_1
    gen = torch.Generator().manual_seed(SEED + 1)
    m = vae2_1.WanVAE_(dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=2,
                       attn_scales=[], temperal_downsample=[False, True, True],
                       dropout=0.0).eval()
    randomise(m, gen)
    save(m.state_dict(), os.path.join(out, "vae_tiny_weights.safetensors"))
    # The same weights as a torch pickle, the format of the released Wan2.1_VAE.pth.
    torch.save({k: v.clone() for k, v in m.state_dict().items()},
               os.path.join(out, "vae_tiny.pth"))
    x = torch.randn(1, 8, 3, 6, 6, generator=gen)
    with torch.no_grad():
        res = m.encoder.downsamples[3](x)
        attn = m.encoder.middle[1](res)
        norm = m.encoder.head[0](res)
    save({"in": x, "residual.out": res, "attention.out": attn, "norm.out": norm},
         os.path.join(out, "vae_tiny_blocks_io.safetensors"))

    # The whole chunked decode (one latent frame at a time through the feature cache),
    # with per-channel latent statistics like Wan2_1_VAE's.
    z = torch.randn(1, 4, 3, 4, 4, generator=gen)
    mean = torch.randn(4, generator=gen)
    std = 0.5 + torch.rand(4, generator=gen)
    with torch.no_grad():
        video = m.decode(z, [mean, 1.0 / std])
    save({"z": z, "mean": mean, "std": std, "video": video},
         os.path.join(out, "vae_tiny_decode_io.safetensors"))

    # The chunked encode (first frame, then chunks of 4) of a 9-frame clip.
    clip = torch.randn(1, 3, 9, 32, 32, generator=gen)
    with torch.no_grad():
        latents = m.encode(clip, [mean, 1.0 / std])
    save({"video": clip, "mean": mean, "std": std, "latents": latents},
         os.path.join(out, "vae_tiny_encode_io.safetensors"))


def t5_fixture(out):
    """umT5-XXL's key list (meta device) and a tiny seeded T5 encoder of the same kind
    (per-layer position bias) run on 12 tokens, the last 3 of them padding."""
    # t5.py imports its tokenizer wrapper (which needs transformers) at module level;
    # the encoder does not use it, so a stand-in module is enough.
    tok = types.ModuleType("wan.modules.tokenizers")
    tok.HuggingfaceTokenizer = None
    sys.modules.setdefault("wan.modules.tokenizers", tok)
    # T5EncoderModel (not used here) has `device=torch.cuda.current_device()` as a
    # default argument, evaluated at import; answer it without a GPU.
    current_device = torch.cuda.current_device
    torch.cuda.current_device = lambda: 0
    try:
        import wan.modules.t5 as t5
    finally:
        torch.cuda.current_device = current_device
    kw = dict(num_buckets=32, shared_pos=False, dropout=0.0)
    with torch.device("meta"):
        m = t5.T5Encoder(vocab=256384, dim=4096, dim_attn=4096, dim_ffn=10240,
                         num_heads=64, num_layers=24, **kw)
    params = [[k, list(v.shape)] for k, v in m.state_dict().items()]
    doc = {"model": "T5Encoder (umt5_xxl, encoder_only)",
           "source": "wan22==2.2.11 wan/modules/t5.py", "count": len(params), "params": params}
    with open(os.path.join(out, "umt5_xxl_params.json"), "w") as f:
        json.dump(doc, f, indent=0)
        f.write("\n")

    gen = torch.Generator().manual_seed(SEED + 2)
    m = t5.T5Encoder(vocab=64, dim=32, dim_attn=32, dim_ffn=64, num_heads=4, num_layers=2,
                     **kw).eval()
    randomise(m, gen)
    with torch.no_grad():
        for name, p in m.state_dict().items():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.add_(1.0)
    ids = torch.randint(0, 64, (1, 12), generator=gen)
    mask = torch.ones(1, 12, dtype=torch.long)
    mask[:, 9:] = 0
    with torch.no_grad():
        y = m(ids, mask)
    save(m.state_dict(), os.path.join(out, "t5_tiny_weights.safetensors"))
    torch.save({k: v.clone() for k, v in m.state_dict().items()},
               os.path.join(out, "t5_tiny.pth"))
    save({"ids": ids.float(), "mask": mask.float(), "out": y},
         os.path.join(out, "t5_tiny_io.safetensors"))
    return len(params)


def audio_features_fixture(out):
    """wav2vec2-like hidden states (3 layers, 101 frames at 50 Hz, width 8) through
    wan22's 50 -> 30 fps interpolation and the per-video-frame bucketing (25 fps,
    48-frame batches, m = 0) that the S2V pipeline applies."""
    for name in ("librosa", "transformers"):
        stub = types.ModuleType(name)
        stub.Wav2Vec2ForCTC = stub.Wav2Vec2Processor = None
        sys.modules.setdefault(name, stub)
    import wan.modules.s2v.audio_encoder as audio_encoder
    gen = torch.Generator().manual_seed(SEED + 3)
    states = torch.randn(3, 101, 8, generator=gen)
    at30 = audio_encoder.linear_interpolation(states, input_fps=50, output_fps=30)
    bucket, batches = audio_encoder.AudioEncoder.get_audio_embed_bucket_fps(
        types.SimpleNamespace(video_rate=30), at30, fps=25, batch_frames=48, m=0)
    save({"states": states, "at30": at30, "bucket": bucket,
          "batches": torch.tensor([float(batches)])},
         os.path.join(out, "audio_features_io.safetensors"))


def sampler_fixture(out):
    from diffusers import FlowMatchEulerDiscreteScheduler
    s = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    s.set_timesteps(4, device="cpu")
    save({"timesteps": s.timesteps, "sigmas": s.sigmas},
         os.path.join(out, "sampler_4steps_shift3.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="wan/tests/fixtures")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    _, model_s2v = import_wan22()
    n = write_key_list(model_s2v, args.out)
    print(f"s2v_14b_params.json: {n} parameters")
    print(f"vae21_params.json: {write_vae_key_list(args.out)} parameters")
    trunk_fixture(model_s2v, args.out)
    vae_block_fixture(args.out)
    print(f"umt5_xxl_params.json: {t5_fixture(args.out)} parameters")
    audio_features_fixture(args.out)
    sampler_fixture(args.out)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from w2v_fixtures import w2v_fixtures
    print(f"w2v_large_params.json: {w2v_fixtures(args.out, SEED + 4, save)} parameters")
    import causal_ref
    causal_ref.causal_fixture(model_s2v, s2v_kwargs, CFG_TINY, SEED, args.out, save)
    print("fixtures written to", args.out)


if __name__ == "__main__":
    main()
