//! Listing a module's parameters (checkpoint key and shape) without allocating them.
//!
//! The visitor reads each parameter's *lazy* shape, so a module built with
//! [`crate::WanS2v::new`] stays uninitialised: listing the 14B tree costs a few
//! megabytes of bookkeeping, not 65 GB of weights.

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;

/// One parameter: its dotted checkpoint key and its shape.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ParamEntry {
    pub key: String,
    pub shape: Vec<usize>,
}

struct KeyLister {
    path: Vec<String>,
    /// Whether each entered container added a path segment (enum variants do not:
    /// PyTorch keys have no counterpart for them).
    pushed: Vec<bool>,
    entries: Vec<ParamEntry>,
}

impl<B: Backend> ModuleVisitor<B> for KeyLister {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        let push = !container_type.starts_with("Enum:");
        if push {
            self.path.push(name.to_string());
        }
        self.pushed.push(push);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        if self.pushed.pop() == Some(true) {
            self.path.pop();
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.entries.push(ParamEntry {
            key: self.path.join("."),
            shape: param.lazy_shape().to_vec(),
        });
    }
}

/// All float parameters of `module` with their keys and shapes, in visiting order.
/// Does not initialise lazily created parameters.
pub fn list_params<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamEntry> {
    let mut lister = KeyLister {
        path: Vec::new(),
        pushed: Vec::new(),
        entries: Vec::new(),
    };
    module.visit(&mut lister);
    lister.entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::S2vConfig;
    use crate::model::WanS2v;
    use burn::backend::NdArray;

    #[test]
    fn listing_keeps_parameters_uninitialised() {
        let device = Default::default();
        let model = WanS2v::<NdArray>::new(&S2vConfig::tiny(), &device);
        let entries = list_params::<NdArray, _>(&model);
        assert!(!entries.is_empty());
        assert!(!model.blocks[0].self_attn.q.weight.is_initialized());
        assert!(!model.patch_embedding.weight.is_initialized());
    }
}
