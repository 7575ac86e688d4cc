//! `cargo run -p wan --example make-tiny-checkpoint -- DIR [SEED]`: writes a random-weight
//! Live Avatar checkpoint at the tiny config in the release layout. It makes noise-like
//! frames; it exists for tests and demos.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: make-tiny-checkpoint DIR [SEED]");
        return ExitCode::from(2);
    };
    let seed = match args.next().map(|s| s.parse::<u64>()) {
        None => 0,
        Some(Ok(s)) => s,
        Some(Err(e)) => {
            eprintln!("SEED must be a whole number: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = wan::release::write_tiny_release(&dir, seed) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    println!("{}", dir.display());
    ExitCode::SUCCESS
}
