//! A synthetic checkpoint directory in the release layout (two shards + index JSON,
//! real key names, tiny shapes) loads through the same loader as the real files, and
//! every kind of damage fails with the file, the key and the shapes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{fixture_path, Fixture, B};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use wan::loader::{load_s2v, S2V_INDEX};
use wan::{S2vConfig, WanError, WanS2v};

type Tensors = BTreeMap<String, (Vec<usize>, Vec<u8>)>;

fn tiny_tensors() -> Tensors {
    let bytes = std::fs::read(fixture_path("s2v_tiny_weights.safetensors")).expect("fixture");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

/// Writes `tensors` as two shards named like the release, plus the index
/// (`wan::release::write_sharded`, which the tiny release uses too).
fn write_release(dir: &Path, tensors: &Tensors) {
    let named: wan::release::Named = tensors
        .iter()
        .map(|(k, (shape, data))| (k.clone(), shape.clone(), data.clone()))
        .collect();
    wan::release::write_sharded(dir, &named).expect("shards and index write");
}

fn load(dir: &Path) -> Result<WanS2v<B>, WanError> {
    let model = WanS2v::<B>::new(&S2vConfig::tiny(), &Default::default());
    load_s2v(model, dir).map(|(m, _)| m)
}

#[test]
fn release_layout_loads_every_tensor_from_its_shard() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_release(dir.path(), &tiny_tensors());
    let model = WanS2v::<B>::new(&S2vConfig::tiny(), &Default::default());
    let (model, report) = load_s2v(model, dir.path()).expect("a complete checkpoint loads");
    assert_eq!(report.files.len(), 2);
    assert_eq!(report.tensors, 180);

    let fx = Fixture::open("s2v_tiny_weights.safetensors");
    for (key, loaded) in [
        (
            "blocks.3.ffn.2.weight",
            model.blocks[3].ffn[2].as_ref().map(|l| l.weight.val()),
        ),
        ("head.head.weight", Some(model.head.head.weight.val())),
    ] {
        let loaded: Vec<f32> = loaded
            .expect("layer exists")
            .into_data()
            .to_vec()
            .expect("f32");
        assert_eq!(
            loaded,
            fx.raw(key).1,
            "{key} keeps the file's values and layout"
        );
    }
}

#[test]
fn missing_tensor_is_named_with_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tensors = tiny_tensors();
    tensors.remove("blocks.2.cross_attn.norm_k.weight");
    write_release(dir.path(), &tensors);
    let err = load(dir.path()).expect_err("a tensor is missing");
    let msg = err.to_string();
    assert!(matches!(err, WanError::MissingTensor { .. }), "{msg}");
    assert!(msg.contains("blocks.2.cross_attn.norm_k.weight"), "{msg}");
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
}

#[test]
fn renamed_tensor_is_named_with_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tensors = tiny_tensors();
    let t = tensors.remove("head.head.weight").expect("key exists");
    tensors.insert("head.proj.weight".into(), t);
    write_release(dir.path(), &tensors);
    let err = load(dir.path()).expect_err("a tensor is renamed");
    let msg = err.to_string();
    assert!(matches!(err, WanError::UnexpectedTensor { .. }), "{msg}");
    assert!(msg.contains("head.proj.weight"), "{msg}");
    assert!(msg.contains("diffusion_pytorch_model-0000"), "{msg}");
}

#[test]
fn misshaped_tensor_reports_file_key_and_both_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut tensors = tiny_tensors();
    let (_, data) = tensors
        .get("blocks.1.self_attn.q.weight")
        .cloned()
        .expect("key exists");
    tensors.insert(
        "blocks.1.self_attn.q.weight".into(),
        (vec![64, 32], data[..64 * 32 * 4].to_vec()),
    );
    write_release(dir.path(), &tensors);
    let err = load(dir.path()).expect_err("a tensor has the wrong shape");
    let msg = err.to_string();
    assert!(matches!(err, WanError::ShapeMismatch { .. }), "{msg}");
    assert!(msg.contains("blocks.1.self_attn.q.weight"), "{msg}");
    assert!(
        msg.contains("[64, 32]") && msg.contains("[64, 64]"),
        "{msg}"
    );
    assert!(msg.contains("diffusion_pytorch_model-0000"), "{msg}");
}

#[test]
fn shard_missing_from_the_directory_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_release(dir.path(), &tiny_tensors());
    let gone = dir
        .path()
        .join("diffusion_pytorch_model-00002-of-00002.safetensors");
    std::fs::remove_file(&gone).expect("remove shard");
    let err = load(dir.path()).expect_err("a shard is missing");
    assert!(err.to_string().contains("00002-of-00002"), "{err}");
}

#[test]
fn directory_without_an_index_says_what_it_looked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load(dir.path()).expect_err("empty directory");
    assert!(err.to_string().contains(S2V_INDEX), "{err}");
}

#[test]
fn bf16_shard_loads_on_an_f32_backend_widened_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_release(dir.path(), &tiny_tensors());
    // Rewrite the first shard in bf16 (the release's dtype): truncate each f32 to
    // its upper 16 bits.
    let shard = dir
        .path()
        .join("diffusion_pytorch_model-00001-of-00002.safetensors");
    let bytes = std::fs::read(&shard).expect("read shard");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    let halves: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let v = st.tensor(n).expect("tensor");
            let data = v
                .data()
                .chunks_exact(4)
                .flat_map(|c| [c[2], c[3]])
                .collect();
            (n.clone(), v.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = halves
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(Dtype::BF16, s.clone(), d).expect("view"),
            )
        })
        .collect();
    std::fs::write(
        &shard,
        safetensors::serialize(views, None).expect("serialize"),
    )
    .expect("write");

    // NdArray holds f32: each bf16 value is widened as it is read, which is exact, so the
    // loaded weight is the file's bf16 value with 16 zero bits below it.
    let model = load(dir.path()).expect("a bf16 shard loads on an f32 backend");
    let (shape, bf16_bytes) = halves
        .iter()
        .find(|(n, _, _)| n == "blocks.0.self_attn.q.weight")
        .map(|(_, s, d)| (s.clone(), d.clone()))
        .expect("the first block is in the first shard");
    let widened: Vec<f32> = bf16_bytes
        .chunks_exact(2)
        .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
        .collect();
    let loaded = model.blocks[0].self_attn.q.weight.val();
    assert_eq!(loaded.dims().to_vec(), shape);
    let loaded: Vec<f32> = loaded.into_data().to_vec().expect("f32");
    assert_eq!(loaded, widened);
    let fx = Fixture::open("s2v_tiny_weights.safetensors");
    assert_ne!(
        loaded,
        fx.raw("blocks.0.self_attn.q.weight").1,
        "the values were rounded"
    );
}
