//! Feeds arbitrary bytes to the job parser: it must return a job or an error, never panic,
//! hang or read outside the roots (which here are a directory that does not exist).
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let roots = jobs::Roots {
        inputs: vec![PathBuf::from("/nonexistent-fuzz-root/in")],
        outputs: vec![PathBuf::from("/nonexistent-fuzz-root/out")],
    };
    let context = jobs::ParseContext {
        templates_dir: Some(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../templates"))),
        roots: &roots,
    };
    let _ = jobs::parse_job_bytes("fuzz.yaml", data, "fuzz", &context);
});
