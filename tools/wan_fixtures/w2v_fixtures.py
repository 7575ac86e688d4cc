"""wav2vec2 fixtures for the `wan` crate (called from gen_fixtures.py's main).

A tiny Wav2Vec2ForCTC with the xlsr-53 layout (layer-norm conv stack, stable layer
norm, weight-normed positional conv) and seeded random weights, run by transformers
on the CPU in f32; the released folder layout (config.json + model.safetensors, and a
pytorch_model.bin with the older weight_g/weight_v keys); the real config's
parameter names and shapes from the meta device; and wan22's own
`AudioEncoder.extract_audio_feat` + `get_audio_embed_bucket_fps` on the tiny model.
"""

import json
import os
import sys
import types

import torch

# The real folder's config (wav2vec2-large-xlsr-53-english), the fields that shape
# the model.
LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
             intermediate_size=4096, conv_dim=[512] * 7,
             conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
             num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
             do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True,
             hidden_act="gelu", feat_extract_activation="gelu", layer_norm_eps=1e-5,
             mask_time_prob=0.05, vocab_size=33)
# Must equal `Wav2Vec2Config::tiny()` in wan/src/wav2vec2.rs.
TINY = dict(LARGE, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, conv_dim=[32] * 7, num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4)


def _real_transformers():
    # audio_features_fixture registers stand-ins for transformers and librosa;
    # drop them so the real package imports.
    for name in ("transformers", "librosa"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__file__", None) is None:
            del sys.modules[name]
    import transformers
    return transformers


def w2v_fixtures(out, seed, save):
    tf = _real_transformers()
    with torch.device("meta"):
        m = tf.Wav2Vec2Model(tf.Wav2Vec2Config(**LARGE))
    params = [[k, list(v.shape)] for k, v in m.state_dict().items()]
    doc = {"model": "Wav2Vec2Model (wav2vec2-large-xlsr-53-english config)",
           "source": f"transformers=={tf.__version__} models/wav2vec2/modeling_wav2vec2.py",
           "count": len(params), "params": params}
    with open(os.path.join(out, "w2v_large_params.json"), "w") as f:
        json.dump(doc, f, indent=0)
        f.write("\n")

    gen = torch.Generator().manual_seed(seed)
    cfg = tf.Wav2Vec2Config(**TINY)
    ctc = tf.Wav2Vec2ForCTC(cfg).eval()
    with torch.no_grad():
        for name, p in ctc.state_dict().items():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("layer_norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("original0"):  # weight-norm gains
                p.copy_(1.0 + 0.1 * noise)
            elif "conv_layers" in name and name.endswith("conv.weight"):
                p.copy_(noise / (p.shape[1] * p.shape[2]) ** 0.5)
            else:
                p.copy_(0.1 * noise)
    model = ctc.wav2vec2

    # The folder as released: config.json + model.safetensors (Wav2Vec2ForCTC keys,
    # `wav2vec2.` prefix and the CTC head), and the same weights as pytorch_model.bin
    # with the pre-parametrization weight-norm names.
    folder = os.path.join(out, "w2v_tiny")
    os.makedirs(folder, exist_ok=True)
    sd = ctc.state_dict()
    save(sd, os.path.join(folder, "model.safetensors"))
    cfg_doc = {k: v for k, v in sorted(TINY.items())}
    cfg_doc["architectures"] = ["Wav2Vec2ForCTC"]
    cfg_doc["model_type"] = "wav2vec2"
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg_doc, f, indent=1, sort_keys=True)
        f.write("\n")
    old = {k.replace("parametrizations.weight.original0", "weight_g")
            .replace("parametrizations.weight.original1", "weight_v"): v.clone()
           for k, v in sd.items()}
    torch.save(old, os.path.join(out, "w2v_tiny_pytorch_model.bin"))

    # 1 s of 16 kHz noise with an offset and a gain, normalised by the feature
    # extractor as the reference's processor does (do_normalize).
    samples = 0.3 * torch.randn(16000, generator=gen) + 0.05
    fe = tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                                     do_normalize=True, return_attention_mask=True)
    values = fe(samples.numpy(), sampling_rate=16000, return_tensors="pt").input_values

    caught = {}

    def keep(name, arg=False):
        def fn(mod, args, result):
            caught[name] = args[0] if arg else (result[0] if isinstance(result, tuple) else result)
        return fn

    enc = model.encoder
    hooks = [model.feature_extractor.conv_layers[0].register_forward_hook(keep("conv0")),
             model.feature_extractor.register_forward_hook(keep("features")),
             model.feature_projection.register_forward_hook(keep("projection")),
             enc.pos_conv_embed.register_forward_hook(keep("pos_conv")),
             enc.layers[0].register_forward_hook(keep("layer0.in", True)),
             enc.layers[0].register_forward_hook(keep("layer0.out")),
             enc.layers[0].attention.register_forward_hook(keep("attn0.out")),
             enc.layers[-1].register_forward_hook(keep("last_layer.out"))]
    with torch.no_grad():
        res = model(values, output_hidden_states=True)
    for h in hooks:
        h.remove()
    # transformers 4.x (what Wan was written against) returns the inputs of the N
    # layers, then the final layer norm's output; 5.x ends with the last layer's
    # output before that norm. Both are kept: the first N states agree.
    states = list(res.hidden_states[:-1]) + [res.last_hidden_state]
    io = {"samples": samples, "input_values": values[0],
          "conv0.out": caught["conv0"], "features": caught["features"],
          "projection": caught["projection"], "pos_conv": caught["pos_conv"],
          "layer0.in": caught["layer0.in"], "layer0.out": caught["layer0.out"],
          "attn0.out": caught["attn0.out"], "last_layer.out": caught["last_layer.out"],
          "hidden_states": torch.cat(states), "last_hidden_state": res.last_hidden_state}

    # wan22's audio path on the same model: extract_audio_feat (processor, all layers,
    # 50 -> 30 fps) then the per-video-frame buckets, with librosa.load answered by
    # the samples above.
    import wan.modules.s2v.audio_encoder as audio_encoder
    audio_encoder.librosa = types.SimpleNamespace(load=lambda path, sr: (samples.numpy(), sr))
    enc_obj = object.__new__(audio_encoder.AudioEncoder)
    enc_obj.processor = fe
    enc_obj.model = _AllLayers4x(ctc)
    enc_obj.video_rate = 30
    with torch.no_grad():
        z = enc_obj.extract_audio_feat("unused.wav", return_all_layers=True)
        bucket, batches = enc_obj.get_audio_embed_bucket_fps(z, fps=25, batch_frames=16, m=0)
    io.update({"at30": z, "bucket": bucket, "batches": torch.tensor([float(batches)])})
    save(io, os.path.join(out, "w2v_tiny_io.safetensors"))
    return len(params)


class _AllLayers4x(torch.nn.Module):
    """Wav2Vec2ForCTC whose `hidden_states` follow transformers 4.x (the final state
    is after the encoder's layer norm), so the reference function sees what it saw
    when it was written."""

    def __init__(self, ctc):
        super().__init__()
        self.ctc = ctc

    @property
    def device(self):
        return self.ctc.device

    def forward(self, input_values, output_hidden_states):
        res = self.ctc.wav2vec2(input_values, output_hidden_states=output_hidden_states)
        return types.SimpleNamespace(
            hidden_states=tuple(res.hidden_states[:-1]) + (res.last_hidden_state,))
