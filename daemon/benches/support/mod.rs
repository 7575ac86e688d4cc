//! What the daemon benchmarks share: latency percentiles and counting filed jobs.

use std::path::Path;
use std::time::Duration;

/// The `p` quantile (0..=1) of already sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Job folders under `jobs_dir` (staging folders, which start with a dot, not counted).
pub fn count_jobs(jobs_dir: &Path) -> usize {
    std::fs::read_dir(jobs_dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}
