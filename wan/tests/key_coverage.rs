//! Key coverage at real size: the module tree built at the 14B config must list exactly
//! the parameter names and shapes of the reference `WanModel_S2V`, as written by
//! `tools/wan_fixtures/gen_fixtures.py` from the reference built on torch's meta device.
//! This is how we know the released checkpoint loads without having it here.

mod common;

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use common::{fixture_path, B};
use wan::keys::list_params;
use wan::t5::{T5Config, T5Encoder};
use wan::vae::{VaeConfig, WanVae};
use wan::{S2vConfig, WanS2v};

fn reference_params(file: &str) -> BTreeMap<String, Vec<usize>> {
    let path = fixture_path(file);
    let text = std::fs::read_to_string(&path).expect("key list fixture is committed");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("key list is JSON");
    let params = doc["params"].as_array().expect("`params` is a list");
    assert_eq!(doc["count"].as_u64(), Some(params.len() as u64));
    params
        .iter()
        .map(|p| {
            let key = p[0].as_str().expect("key is a string").to_string();
            let shape = p[1]
                .as_array()
                .expect("shape is a list")
                .iter()
                .map(|d| d.as_u64().expect("dimension") as usize)
                .collect();
            (key, shape)
        })
        .collect()
}

struct CountInitialised(usize);

impl<Bk: Backend> ModuleVisitor<Bk> for CountInitialised {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        if param.is_initialized() {
            self.0 += 1;
        }
    }
}

#[test]
fn s2v_14b_tree_lists_exactly_the_reference_parameters() {
    let reference = reference_params("s2v_14b_params.json");
    assert_eq!(
        reference.len(),
        1260,
        "the reference S2V DiT has 1260 tensors"
    );

    let model = WanS2v::<B>::new(&S2vConfig::s2v_14b(), &Default::default());
    let ours: BTreeMap<String, Vec<usize>> = list_params::<B, _>(&model)
        .into_iter()
        .map(|p| (p.key, p.shape))
        .collect();

    assert_same_tree(&reference, &ours);

    let mut counter = CountInitialised(0);
    model.visit(&mut counter);
    assert_eq!(counter.0, 0, "listing must not allocate any parameter");

    let params: usize = reference
        .values()
        .map(|s| s.iter().product::<usize>())
        .sum();
    eprintln!("S2V 14B: {} tensors, {params} parameters", reference.len());
}

/// Same names and shapes on both sides, or a message listing the differences.
fn assert_same_tree(reference: &BTreeMap<String, Vec<usize>>, ours: &BTreeMap<String, Vec<usize>>) {
    let missing: Vec<_> = reference
        .keys()
        .filter(|k| !ours.contains_key(*k))
        .collect();
    let extra: Vec<_> = ours
        .keys()
        .filter(|k| !reference.contains_key(*k))
        .collect();
    assert!(missing.is_empty(), "keys the port lacks: {missing:?}");
    assert!(extra.is_empty(), "keys the reference lacks: {extra:?}");
    for (key, shape) in reference {
        assert_eq!(&ours[key], shape, "shape of `{key}`");
    }
}

#[test]
fn wan21_vae_tree_lists_exactly_the_reference_parameters() {
    let reference = reference_params("vae21_params.json");
    assert_eq!(reference.len(), 194);
    let vae = WanVae::<B>::new(&VaeConfig::wan21(), &Default::default());
    let ours: BTreeMap<String, Vec<usize>> = list_params::<B, _>(&vae)
        .into_iter()
        .map(|p| (p.key, p.shape))
        .collect();
    assert_same_tree(&reference, &ours);
    let mut counter = CountInitialised(0);
    vae.visit(&mut counter);
    assert_eq!(counter.0, 0, "listing must not allocate any parameter");
}

#[test]
fn umt5_xxl_encoder_tree_lists_exactly_the_reference_parameters() {
    let reference = reference_params("umt5_xxl_params.json");
    assert_eq!(reference.len(), 242);
    let t5 = T5Encoder::<B>::new(&T5Config::umt5_xxl(), &Default::default());
    let ours: BTreeMap<String, Vec<usize>> = list_params::<B, _>(&t5)
        .into_iter()
        .map(|p| (p.key, p.shape))
        .collect();
    assert_same_tree(&reference, &ours);
    let mut counter = CountInitialised(0);
    t5.visit(&mut counter);
    assert_eq!(counter.0, 0, "listing must not allocate any parameter");
}
