//! Release directories as users have them, and `wan::check` on them: the LoRA in either
//! layout, the released diffusers-style `config.json`, a partial LoRA refused with its count,
//! and the header check at full size (the sparse 14B release) and on damaged copies of the
//! tiny release (each problem named with its file and key).

mod common;

use std::path::{Path, PathBuf};

use common::B;
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use wan::check::{check_release, Component, ProblemKind};
use wan::memory::{choose, Budget, JobShape, ModeChoice, ModelSizes, PrecisionChoice};
use wan::pipeline::{LiveAvatar, LiveAvatarConfig, MemoryMode};
use wan::release::{find_lora, write_tiny_release, LORA_FILE, LORA_HF_CACHE, LORA_NAME};
use wan::sparse_release::{release_config_json, write_sparse_release, SPARSE_LORA_REVISION};
use wan::WanError;

const SHARD1: &str = "Wan2.2-S2V-14B/diffusion_pytorch_model-00001-of-00002.safetensors";

/// Rewrites the safetensors file at `path` through `edit` (name, shape, bytes of each tensor).
fn rewrite(path: &Path, edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let bytes = std::fs::read(path).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let dtype = st.tensors()[0].1.dtype();
    edit(&mut tensors);
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(dtype, s.clone(), d).expect("view"),
            )
        })
        .collect();
    std::fs::write(
        path,
        safetensors::serialize(views, None).expect("serialize"),
    )
    .expect("write");
}

fn has(
    report: &wan::check::CheckReport,
    c: Component,
    file: &Path,
    key: Option<&str>,
    kind: impl Fn(&ProblemKind) -> bool,
) -> bool {
    report
        .of(c)
        .any(|p| p.file == file && p.key.as_deref() == key && kind(&p.kind))
}

#[test]
fn the_lora_is_found_in_either_layout_and_ambiguity_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let plain = d.join(LORA_FILE);
    std::fs::create_dir_all(plain.parent().expect("parent")).expect("mkdir");
    std::fs::write(&plain, b"x").expect("write");
    assert_eq!(find_lora(d).expect("plain"), plain);
    std::fs::remove_file(&plain).expect("rm");

    let cache = d.join(LORA_HF_CACHE);
    let snap = |rev: &str| {
        let p = cache.join("snapshots").join(rev).join(LORA_NAME);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, b"x").expect("write");
        p
    };
    let only = snap("aaaa");
    assert_eq!(find_lora(d).expect("the only snapshot"), only);
    let other = snap("bbbb");
    let e = find_lora(d).expect_err("two snapshots, no ref").to_string();
    assert!(
        e.contains("aaaa") && e.contains("bbbb") && e.contains("refs/main"),
        "{e}"
    );
    std::fs::create_dir_all(cache.join("refs")).expect("mkdir");
    std::fs::write(cache.join("refs/main"), "bbbb\n").expect("write");
    assert_eq!(find_lora(d).expect("refs/main"), other);
    std::fs::write(cache.join("refs/main"), "cccc").expect("write");
    let e = find_lora(d)
        .expect_err("a ref to a missing snapshot")
        .to_string();
    assert!(e.contains("cccc"), "{e}");
    // The plain layout wins when both are there.
    std::fs::write(&plain, b"x").expect("write");
    assert_eq!(find_lora(d).expect("plain"), plain);

    // Nothing at all: the error names both places.
    let empty = tempfile::tempdir().expect("tempdir");
    let e = find_lora(empty.path()).expect_err("no LoRA").to_string();
    assert!(e.contains(LORA_FILE) && e.contains("snapshots"), "{e}");
}

#[test]
fn a_release_loads_with_its_diffusers_config_and_its_lora_in_the_hf_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_tiny_release(d, 3).expect("tiny release");
    // The LoRA moved where hf_hub_download leaves it.
    let target = d
        .join(LORA_HF_CACHE)
        .join("snapshots/feedbeef")
        .join(LORA_NAME);
    std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
    std::fs::rename(d.join(LORA_FILE), &target).expect("move");
    let m = LiveAvatar::<B>::load(d, &Default::default()).expect("loads with the HF layout");
    assert_eq!(m.memory_mode(), MemoryMode::Resident);

    // The released config.json (no patch_size, qk_norm, cross_attn_norm, text_dim,
    // window_size) reads as the release.
    let json = release_config_json();
    for absent in [
        "patch_size",
        "qk_norm",
        "cross_attn_norm",
        "text_dim",
        "window_size",
    ] {
        assert!(json.get(absent).is_none(), "{absent}");
    }
    let rel = tempfile::tempdir().expect("tempdir");
    let cfg_path = rel.path().join("Wan2.2-S2V-14B/config.json");
    std::fs::create_dir_all(cfg_path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&cfg_path, json.to_string()).expect("write");
    assert_eq!(
        LiveAvatarConfig::from_dir(rel.path()).expect("loads"),
        LiveAvatarConfig::release()
    );
    // The flags it leaves out may be given with the values implemented, not others.
    let mut with = json.clone();
    with["qk_norm"] = true.into();
    with["cross_attn_norm"] = true.into();
    with["window_size"] = serde_json::json!([-1, -1]);
    std::fs::write(&cfg_path, with.to_string()).expect("write");
    assert!(LiveAvatarConfig::from_dir(rel.path()).is_ok());
    for (field, value) in [
        ("qk_norm", serde_json::json!(false)),
        ("cross_attn_norm", serde_json::json!(false)),
        ("window_size", serde_json::json!([512, 512])),
    ] {
        let mut bad = json.clone();
        bad[field] = value;
        std::fs::write(&cfg_path, bad.to_string()).expect("write");
        let e = LiveAvatarConfig::from_dir(rel.path())
            .expect_err(field)
            .to_string();
        assert!(e.contains(field) && e.contains("config.json"), "{e}");
    }
}

#[test]
fn a_partial_lora_is_refused_with_its_count_and_caught_by_the_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_tiny_release(d, 3).expect("tiny release");
    let lora = d.join(LORA_FILE);
    let dropped = "base_model.model.blocks.2.cross_attn.v.lora_B.weight";
    rewrite(&lora, |t| {
        t.retain(|(n, _, _)| !n.contains("blocks.2.cross_attn.v."));
    });
    let err = LiveAvatar::<B>::load(d, &Default::default())
        .err()
        .expect("a partial LoRA loads");
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            WanError::LoraIncomplete {
                found: 51,
                expected: 52,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("51") && msg.contains("52") && msg.contains("102") && msg.contains("104"),
        "{msg}"
    );
    assert!(
        msg.contains("blocks.2.cross_attn.v") && msg.contains("liveavatar.safetensors"),
        "{msg}"
    );

    let report = check_release(d);
    assert!(!report.is_ok());
    assert!(
        has(
            &report,
            Component::Lora,
            &lora,
            Some(dropped),
            |k| matches!(k, ProblemKind::Missing { .. })
        ),
        "{report}"
    );
    assert!(
        has(&report, Component::Lora, &lora, None, |k| *k
            == ProblemKind::LoraCount {
                found: 51,
                expected: 52
            }),
        "{report}"
    );
    assert_eq!(report.problems.len(), 3, "{report}");
}

#[test]
fn the_check_names_file_and_key_of_a_renamed_a_misshaped_and_a_truncated_tensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write_tiny_release(d, 5).expect("tiny release");
    let clean = check_release(d);
    assert!(clean.is_ok(), "{clean}");
    assert_eq!(
        clean
            .checked
            .iter()
            .map(|c| c.component)
            .collect::<Vec<_>>(),
        vec![
            Component::Dit,
            Component::Vae,
            Component::Umt5,
            Component::Wav2vec2,
            Component::Lora
        ]
    );
    let shard: PathBuf = d.join(SHARD1);
    let original = std::fs::read(&shard).expect("read");
    let st = SafeTensors::deserialize(&original).expect("st");
    let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    let (renamed, misshaped) = (
        names
            .iter()
            .find(|n| n.ends_with("norm_q.weight"))
            .expect("a norm in shard 1")
            .clone(),
        names
            .iter()
            .find(|n| n.ends_with(".q.weight") && n.starts_with("blocks."))
            .expect("a q projection in shard 1")
            .clone(),
    );
    drop(st);

    // Renamed: the new name is unexpected, the old one missing.
    let new_name = renamed.replace("norm_q", "q_norm");
    rewrite(&shard, |t| {
        for e in t.iter_mut() {
            if e.0 == renamed {
                e.0 = new_name.clone();
            }
        }
    });
    let r = check_release(d);
    assert!(
        has(&r, Component::Dit, &shard, Some(&new_name), |k| *k
            == ProblemKind::Unexpected),
        "{r}"
    );
    assert!(
        has(
            &r,
            Component::Dit,
            &d.join("Wan2.2-S2V-14B"),
            Some(&renamed),
            |k| matches!(k, ProblemKind::Missing { .. })
        ),
        "{r}"
    );
    assert_eq!(r.problems.len(), 2, "{r}");
    std::fs::write(&shard, &original).expect("restore");

    // Mis-shaped: the same bytes as [32, 128] instead of [64, 64].
    rewrite(&shard, |t| {
        for e in t.iter_mut() {
            if e.0 == misshaped {
                e.1 = vec![32, 128];
            }
        }
    });
    let r = check_release(d);
    assert!(
        has(&r, Component::Dit, &shard, Some(&misshaped), |k| *k
            == ProblemKind::Shape {
                expected: vec![64, 64],
                found: vec![32, 128]
            }),
        "{r}"
    );
    assert_eq!(r.problems.len(), 1, "{r}");
    std::fs::write(&shard, &original).expect("restore");

    // Truncated: the last kilobyte of the shard is gone.
    std::fs::write(&shard, &original[..original.len() - 1000]).expect("truncate");
    let r = check_release(d);
    assert!(
        has(
            &r,
            Component::Dit,
            &shard,
            None,
            |k| matches!(k, ProblemKind::Truncated { needs, has } if *needs == original.len() as u64 && *has == original.len() as u64 - 1000)
        ),
        "{r}"
    );
    std::fs::write(&shard, &original).expect("restore");

    // A VAE tensor of another dtype (integers) and a wav2vec2 folder that does not fit.
    let vae = d.join("Wan2.2-S2V-14B/Wan2.1_VAE.safetensors");
    let vae_bytes = std::fs::read(&vae).expect("read");
    let st = SafeTensors::deserialize(&vae_bytes).expect("st");
    let (key, view) = st.tensors().into_iter().next().expect("a tensor");
    let mut views: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| *n != key)
        .collect();
    views.push((
        key.clone(),
        TensorView::new(safetensors::Dtype::I32, view.shape().to_vec(), view.data()).expect("view"),
    ));
    let damaged = safetensors::serialize(views, None).expect("serialize");
    std::fs::write(&vae, damaged).expect("write");
    let r = check_release(d);
    assert!(
        has(&r, Component::Vae, &vae, Some(&key), |k| *k
            == ProblemKind::Dtype {
                found: "I32".into()
            }),
        "{r}"
    );
    assert!(r.to_string().contains(&key));
}

#[test]
fn the_sparse_14b_release_passes_the_check_and_plans_at_full_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let files = write_sparse_release(d).expect("writes");
    let total: u64 = files.iter().map(|f| f.len).sum();
    // DiT 32.6 GB, umT5 11.4 GB, LoRA 1.35 GB, wav2vec2 1.26 GB, VAE 0.5 GB.
    assert!((46.0e9..48.0e9).contains(&(total as f64)), "{total}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let used: u64 = files
            .iter()
            .map(|f| std::fs::metadata(&f.path).expect("meta").blocks() * 512)
            .sum();
        assert!(
            used < 64 << 20,
            "{used} bytes on disk: the data are not holes"
        );
    }
    let report = check_release(d);
    assert!(report.is_ok(), "{report}");
    let tensors: Vec<(Component, usize)> = report
        .checked
        .iter()
        .map(|c| (c.component, c.tensors))
        .collect();
    assert_eq!(
        tensors,
        vec![
            (Component::Dit, 1260),
            (Component::Vae, 194),
            (Component::Umt5, 242),
            (Component::Wav2vec2, 424),
            (Component::Lora, 896)
        ]
    );
    assert!(find_lora(d)
        .expect("found")
        .to_string_lossy()
        .contains(SPARSE_LORA_REVISION));
    assert_eq!(
        LiveAvatarConfig::from_dir(d).expect("config"),
        LiveAvatarConfig::release()
    );
    let sizes = ModelSizes::from_dir(d).expect("sizes");
    assert_eq!(*sizes, *ModelSizes::release());

    // Placement at full size: a 24 GB card with 128 GiB of host RAM streams (some blocks may
    // stay resident), an 80 GB card keeps everything or most of it resident, a card too small
    // for anything is refused with figures and suggestions.
    const GIB: u64 = 1 << 30;
    let job = JobShape::release(704, 384, 48);
    let on = |card: u64, host: u64| {
        choose(
            &sizes,
            &job,
            Budget {
                device_free: card * GIB - GIB,
                host_free: host * GIB,
            },
            ModeChoice::Auto,
            PrecisionChoice::Auto,
        )
    };
    let small = on(24, 128).expect("fits a 24 GB card");
    assert!(
        matches!(small.mode, MemoryMode::Streamed | MemoryMode::Hybrid { .. }),
        "{:?}",
        small.mode
    );
    assert!(small.host_bytes() > 40_000_000_000);
    let big = on(80, 128).expect("fits an 80 GB card");
    assert!(
        matches!(big.mode, MemoryMode::Resident | MemoryMode::Hybrid { .. }),
        "{:?}",
        big.mode
    );
    // 16 GB: prepare (umT5-XXL alone is 11.4 GB) fits only at a smaller size.
    let refused = on(16, 128).expect_err("a 16 GB card");
    let text = refused.to_string();
    assert!(
        text.contains("704*384") && text.contains("try:") && text.contains("size "),
        "{text}"
    );
    let closest = refused.closest.as_ref().expect("a plan");
    assert!(closest.prepare_peak() > refused.budget.device_free);
    // 12 GB: nothing of this model fits, and the refusal says so with the figures.
    let none = on(12, 128).expect_err("a 12 GB card");
    assert!(
        none.suggestions.is_empty() && none.to_string().contains("GB on the device"),
        "{none}"
    );
    let host_poor = on(24, 16).expect_err("16 GiB of host RAM cannot stream 14B");
    assert!(host_poor.to_string().contains("host"), "{host_poor}");
}
