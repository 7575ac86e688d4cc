//! Writes a 14B-shaped Live Avatar release with real headers and hole data
//! (`wan::sparse_release`): the release layout at full size in seconds, for tests of
//! `model check`, intake and placement. Never load or render it: its weights are zeros.
//!
//! `cargo run -p wan --example make-sparse-release -- DIR`

use std::path::PathBuf;

fn main() {
    let Some(dir) = std::env::args().nth(1).map(PathBuf::from) else {
        eprintln!("usage: make-sparse-release DIR");
        std::process::exit(2);
    };
    match wan::sparse_release::write_sparse_release(&dir) {
        Ok(files) => {
            let total: u64 = files.iter().map(|f| f.len).sum();
            for f in &files {
                println!("{:>16} {}", f.len, f.path.display());
            }
            println!(
                "{} files, {:.2} GB apparent size (holes: next to no disk used) in {}",
                files.len(),
                total as f64 / 1e9,
                dir.display()
            );
            let report = wan::check::check_release(&dir);
            print!("{report}");
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}
