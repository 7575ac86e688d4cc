//! wav2vec2 against transformers' `Wav2Vec2Model` at a tiny config (seeded weights, f32
//! CPU), the released folder layout, the real config's key tree, and the whole audio
//! path of wan22's S2V pipeline from raw samples to per-video-frame features.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use common::{assert_close, fixture_path, rel_l2, Fixture, B};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use wan::keys::list_params;
use wan::wav2vec2::{
    audio_per_video_frame, load_wav2vec2_dir, load_wav2vec2_file, normalize_waveform,
    Wav2Vec2Config, Wav2Vec2Model,
};
use wan::WanError;

const IO: &str = "w2v_tiny_io.safetensors";

fn tiny_dir() -> std::path::PathBuf {
    fixture_path("w2v_tiny")
}

fn load_tiny<B: Backend>() -> Wav2Vec2Model<B> {
    let (model, report) =
        load_wav2vec2_dir::<B>(&tiny_dir(), &Default::default()).expect("tiny folder loads");
    // 2 layers × 16 + 7 conv layers × 4 + 4 projection + 3 pos conv + 2 final norm + 1.
    assert_eq!(report.tensors, 2 * 16 + 7 * 4 + 4 + 3 + 2 + 1);
    model
}

#[test]
fn config_json_of_the_folder_gives_the_tiny_config() {
    let cfg = Wav2Vec2Config::from_json_file(&tiny_dir().join("config.json")).expect("config");
    assert_eq!(cfg, Wav2Vec2Config::tiny());
    // 16 kHz to 50 Hz: one second gives 49 frames, as transformers gave the fixture.
    let fx = Fixture::<B>::read(IO);
    assert_eq!(cfg.output_frames(16000), fx.raw("features").0[2]);
    assert_eq!(cfg.output_frames(399), 0);
}

fn waveform_normalisation_matches_the_feature_extractor<B: Backend>() {
    let fx = Fixture::<B>::read(IO);
    let samples = fx.raw("samples").1;
    let ours = normalize_waveform(&samples);
    let n = ours.len();
    let t = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [n]), &Default::default());
    assert_close(
        t(ours),
        t(fx.raw("input_values").1),
        1e-5,
        1e-5,
        "normalised waveform",
    );
}

fn single_layers_match_transformers<B: Backend>() {
    let fx = Fixture::<B>::read(IO);
    let m = load_tiny::<B>();
    let input: Tensor<B, 2> = fx.tensor::<1>("input_values").unsqueeze::<2>();

    let conv0 = m.feature_extractor.conv_layers[0].forward(input.clone().unsqueeze_dim(1));
    assert_close(conv0, fx.tensor("conv0.out"), 1e-5, 1e-4, "conv layer 0");
    let features = m.features(input);
    assert_close(
        features,
        fx.tensor("features"),
        1e-5,
        1e-4,
        "conv feature stack",
    );
    let projected = m.project(fx.tensor("features"));
    assert_close(
        projected,
        fx.tensor("projection"),
        1e-5,
        1e-4,
        "feature projection",
    );
    let pos = m.encoder.pos_conv_embed.forward(fx.tensor("projection"));
    assert_close(pos, fx.tensor("pos_conv"), 1e-5, 1e-4, "positional conv");

    let layer = &m.encoder.layers[0];
    let attn = layer
        .attention
        .forward(layer.layer_norm.forward(fx.tensor("layer0.in")));
    assert_close(attn, fx.tensor("attn0.out"), 1e-5, 1e-4, "attention 0");
    let out = layer.forward(fx.tensor("layer0.in"));
    assert_close(out, fx.tensor("layer0.out"), 1e-5, 1e-4, "encoder layer 0");
}

fn all_hidden_states_match_transformers<B: Backend>() {
    let fx = Fixture::<B>::read(IO);
    let m = load_tiny::<B>();
    let states = m.hidden_states(fx.tensor::<1>("input_values").unsqueeze::<2>());
    assert_eq!(states.len(), 3, "num_hidden_layers + 1 states");
    // The final state is the encoder's layer norm of the last layer's output
    // (transformers 4.x); the last layer's raw output is a different tensor.
    let last = states[2].clone();
    assert!(rel_l2(last.clone(), fx.tensor("last_layer.out")) > 0.1);
    assert!(rel_l2(last, fx.tensor("last_hidden_state")) < 1e-4);
    let all = Tensor::cat(states, 0);
    let err = rel_l2(all.clone(), fx.tensor("hidden_states"));
    eprintln!("hidden states: relative L2 {err:e}");
    assert!(err < 1e-4, "relative L2 {err:e}");
    assert_close(all, fx.tensor("hidden_states"), 1e-4, 1e-3, "hidden states");
}

fn raw_samples_to_per_video_frame_features_match_wan22<B: Backend>() {
    let fx = Fixture::<B>::read(IO);
    let m = load_tiny::<B>();
    let samples = fx.raw("samples").1;
    let (bucket, batches) =
        audio_per_video_frame(&m, &samples, 25.0, 16, &Default::default()).expect("long enough");
    let (shape, expected) = fx.raw("bucket");
    assert_eq!(batches as f32, fx.raw("batches").1[0]);
    assert_eq!(bucket.len(), shape.iter().product::<usize>());
    assert!(
        expected[expected.len() - 32..].iter().all(|v| *v == 0.0),
        "the fixture covers video frames past the audio"
    );
    let t = |v: Vec<f32>| {
        Tensor::<B, 3>::from_data(TensorData::new(v, shape.clone()), &Default::default())
    };
    let err = rel_l2(t(bucket.clone()), t(expected.clone()));
    eprintln!("per-video-frame features: relative L2 {err:e}");
    assert!(err < 1e-4, "relative L2 {err:e}");
    assert_close(
        t(bucket),
        t(expected),
        1e-4,
        1e-3,
        "per-video-frame features",
    );

    assert!(
        audio_per_video_frame(&m, &samples[..300], 25.0, 16, &Default::default()).is_none(),
        "shorter than the receptive field"
    );
}

#[test]
fn older_pickle_with_weight_g_and_weight_v_loads_the_same_weights() {
    let fx = Fixture::<B>::read(IO);
    let model = Wav2Vec2Model::<B>::new(&Wav2Vec2Config::tiny(), &Default::default());
    let (old, report) = load_wav2vec2_file(
        model,
        &fixture_path("w2v_tiny_pytorch_model.bin"),
        &Default::default(),
    )
    .expect("pickle loads");
    assert_eq!(report.tensors, 70);
    let x: Tensor<B, 3> = fx.tensor("projection");
    let a = old.encoder.pos_conv_embed.forward(x.clone());
    assert_close(
        a,
        fx.tensor("pos_conv"),
        1e-5,
        1e-4,
        "positional conv (pickle)",
    );
}

type Tensors = BTreeMap<String, (Vec<usize>, Vec<u8>)>;

fn tiny_tensors() -> Tensors {
    let bytes = std::fs::read(tiny_dir().join("model.safetensors")).expect("fixture");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn write_folder(dir: &Path, tensors: &Tensors) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, (shape, data))| {
            (
                k.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data).expect("tensor"),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, None).expect("serialize");
    std::fs::write(dir.join("model.safetensors"), bytes).expect("write");
    std::fs::copy(tiny_dir().join("config.json"), dir.join("config.json")).expect("config");
}

fn load_from(dir: &Path) -> Result<Wav2Vec2Model<B>, WanError> {
    load_wav2vec2_dir::<B>(dir, &Default::default()).map(|(m, _)| m)
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tensors = tiny_tensors();
    tensors.remove("wav2vec2.encoder.layers.1.attention.k_proj.bias");
    write_folder(dir.path(), &tensors);
    let err = load_from(dir.path()).expect_err("incomplete");
    let msg = err.to_string();
    assert!(matches!(err, WanError::MissingTensor { .. }), "{msg}");
    assert!(
        msg.contains("encoder.layers.1.attention.k_proj.bias"),
        "{msg}"
    );
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn misshaped_tensor_reports_key_and_both_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tensors = tiny_tensors();
    let key = "wav2vec2.feature_extractor.conv_layers.3.conv.weight";
    let (_, data) = tensors.get(key).cloned().expect("key exists");
    tensors.insert(
        key.into(),
        (vec![32, 32, 2], data[..32 * 32 * 2 * 4].to_vec()),
    );
    write_folder(dir.path(), &tensors);
    let err = load_from(dir.path()).expect_err("wrong shape");
    let msg = err.to_string();
    assert!(matches!(err, WanError::ShapeMismatch { .. }), "{msg}");
    assert!(
        msg.contains("feature_extractor.conv_layers.3.conv.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("[32, 32, 2]") && msg.contains("[32, 32, 3]"),
        "{msg}"
    );
}

#[test]
fn foreign_tensor_is_refused_but_the_ctc_head_is_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tensors = tiny_tensors();
    assert!(
        tensors.contains_key("lm_head.weight"),
        "the fixture is a CTC file"
    );
    let extra = tensors["wav2vec2.encoder.layer_norm.bias"].clone();
    tensors.insert("wav2vec2.quantizer.codevectors".into(), extra);
    write_folder(dir.path(), &tensors);
    let err = load_from(dir.path()).expect_err("foreign tensor");
    let msg = err.to_string();
    assert!(matches!(err, WanError::UnexpectedTensor { .. }), "{msg}");
    assert!(msg.contains("quantizer.codevectors"), "{msg}");
}

#[test]
fn unsupported_or_missing_config_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_folder(dir.path(), &tiny_tensors());
    let path = dir.path().join("config.json");
    let text = std::fs::read_to_string(&path).expect("config");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    json["do_stable_layer_norm"] = false.into();
    std::fs::write(&path, json.to_string()).expect("write");
    let msg = load_from(dir.path()).expect_err("post-norm").to_string();
    assert!(
        msg.contains("do_stable_layer_norm") && msg.contains("config.json"),
        "{msg}"
    );

    std::fs::remove_file(&path).expect("remove");
    let msg = load_from(dir.path()).expect_err("no config").to_string();
    assert!(msg.contains("config.json"), "{msg}");

    std::fs::copy(tiny_dir().join("config.json"), &path).expect("config");
    std::fs::remove_file(dir.path().join("model.safetensors")).expect("remove");
    let msg = load_from(dir.path()).expect_err("no weights").to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("pytorch_model.bin"),
        "{msg}"
    );
}

#[test]
fn large_xlsr53_tree_lists_exactly_the_reference_parameters() {
    let text = std::fs::read_to_string(fixture_path("w2v_large_params.json")).expect("key list");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json");
    let params = doc["params"].as_array().expect("params");
    assert_eq!(doc["count"].as_u64(), Some(params.len() as u64));
    // transformers 5 lists the weight norm as a parametrization; the released folder
    // (and this tree) use the older names, which the loader maps both ways to.
    let reference: BTreeMap<String, Vec<usize>> = params
        .iter()
        .map(|p| {
            let key = p[0]
                .as_str()
                .expect("key")
                .replace("parametrizations.weight.original0", "weight_g")
                .replace("parametrizations.weight.original1", "weight_v");
            let shape = p[1]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dim") as usize)
                .collect();
            (key, shape)
        })
        .collect();
    assert_eq!(reference.len(), 422);
    let model = Wav2Vec2Model::<B>::new(&Wav2Vec2Config::large_xlsr53(), &Default::default());
    let ours: BTreeMap<String, Vec<usize>> = list_params::<B, _>(&model)
        .into_iter()
        .map(|p| (p.key, p.shape))
        .collect();
    let missing: Vec<_> = reference
        .keys()
        .filter(|k| !ours.contains_key(*k))
        .collect();
    let extra: Vec<_> = ours
        .keys()
        .filter(|k| !reference.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}, extra {extra:?}"
    );
    for (k, shape) in &reference {
        assert_eq!(&ours[k], shape, "{k}");
    }
    // Listing the tree allocated nothing (1.2 GB of f32 weights at this size).
    let mut count = CountInitialised(0);
    model.visit(&mut count);
    assert_eq!(count.0, 0, "parameters were allocated");
}

struct CountInitialised(usize);

impl<Bk: Backend> ModuleVisitor<Bk> for CountInitialised {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        if param.is_initialized() {
            self.0 += 1;
        }
    }
}

common::backend_tests!(
    waveform_normalisation_matches_the_feature_extractor,
    single_layers_match_transformers,
    all_hidden_states_match_transformers,
    raw_samples_to_per_video_frame_features_match_wan22,
);
