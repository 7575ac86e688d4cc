//! SIGHUP: read the config file again without dropping a job.
//!
//! Some settings only matter for what happens next (which paths a new job may use, which
//! engines it may name, whether the queue is held, where notices go, how workers started from now on are supervised): those take
//! effect at once. Others are baked into what the daemon built at start (the spool it watches,
//! the state dir it locked, the log files it writes, the GPU pool it placed jobs on): changing
//! them under running jobs would strand those jobs, so a changed value is logged as "restart
//! needed" and the old one stays in force until the next start.

use std::sync::Arc;

use notices::DispatcherHandle;
use serde::Serialize;

use crate::config::DaemonConfig;

/// What the scheduler takes from a reload.
pub struct Reconfigure {
    /// The configuration in force from now on.
    pub config: Arc<DaemonConfig>,
    /// The doorbell of a restarted notice dispatcher, when `notices:` changed.
    pub dispatcher: Option<DispatcherHandle>,
}

/// The outcome of comparing the running configuration with the file as it is now.
#[derive(Debug)]
pub struct ReloadPlan {
    /// The new file's live settings over the running configuration's restart-only ones.
    pub effective: DaemonConfig,
    /// Live keys whose value changed, so the log says what the reload did.
    pub applied: Vec<&'static str>,
    /// Keys that changed in the file but keep their old value until a restart.
    pub restart_needed: Vec<&'static str>,
    /// `notices:` changed: the dispatcher must be rebuilt.
    pub notices_changed: bool,
}

fn differs<T: Serialize>(old: &T, new: &T) -> bool {
    // Comparing the serialized forms keeps this independent of which config types implement
    // PartialEq; every config type is Serialize because `check-config` prints it.
    serde_json::to_value(old).ok() != serde_json::to_value(new).ok()
}

/// Decides what a reload changes; see the module docs for which keys are live.
pub fn plan(old: &DaemonConfig, new: DaemonConfig) -> ReloadPlan {
    let mut applied = Vec::new();
    let mut restart_needed = Vec::new();
    let live: [(&'static str, bool); 5] = [
        (
            "allowed_roots",
            differs(&old.allowed_roots, &new.allowed_roots),
        ),
        ("hold_queue", old.hold_queue != new.hold_queue),
        ("notices", differs(&old.notices, &new.notices)),
        ("worker", differs(&old.worker, &new.worker)),
        ("engines", differs(&old.engines, &new.engines)),
    ];
    for (key, changed) in live {
        if changed {
            applied.push(key);
        }
    }
    let fixed: [(&'static str, bool); 9] = [
        ("spool_dir", old.spool_dir != new.spool_dir),
        ("state_dir", old.state_dir != new.state_dir),
        ("log_dir", old.log_dir != new.log_dir),
        ("templates_dir", old.templates_dir != new.templates_dir),
        (
            "model_cache_dir",
            old.model_cache_dir != new.model_cache_dir,
        ),
        ("gpu_pool", differs(&old.gpu_pool, &new.gpu_pool)),
        ("http", differs(&old.http, &new.http)),
        (
            "dcgm_job_mapping_dir",
            old.dcgm_job_mapping_dir != new.dcgm_job_mapping_dir,
        ),
        ("executor", differs(&old.executor, &new.executor)),
    ];
    for (key, changed) in fixed {
        if changed {
            restart_needed.push(key);
        }
    }
    let notices_changed = applied.contains(&"notices");
    // Start from the running config, so a key this module does not know yet keeps its old
    // value (the safe side), then take the live keys from the file.
    let mut effective = old.clone();
    effective.allowed_roots = new.allowed_roots;
    effective.hold_queue = new.hold_queue;
    effective.notices = new.notices;
    effective.worker = new.worker;
    // Only for jobs accepted from now on: a job keeps the declaration it was accepted with.
    effective.engines = new.engines;
    ReloadPlan {
        effective,
        applied,
        restart_needed,
        notices_changed,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const BASE: &str = "spool_dir: /s\nstate_dir: /st\nlog_dir: /l\n";

    fn parse(text: &str) -> DaemonConfig {
        DaemonConfig::parse("c.yaml", text).expect("test config is valid")
    }

    #[test]
    fn unchanged_file_changes_nothing() {
        let plan = plan(&parse(BASE), parse(BASE));
        assert!(plan.applied.is_empty());
        assert!(plan.restart_needed.is_empty());
        assert!(!plan.notices_changed);
    }

    #[test]
    fn hold_queue_and_roots_apply_at_once() {
        let new = format!("{BASE}hold_queue: true\nallowed_roots: {{ inputs: [/media] }}\n");
        let plan = plan(&parse(BASE), parse(&new));
        assert_eq!(plan.applied, vec!["allowed_roots", "hold_queue"]);
        assert!(plan.effective.hold_queue);
        assert_eq!(
            plan.effective.allowed_roots.inputs,
            vec![PathBuf::from("/media")]
        );
    }

    #[test]
    fn moved_spool_keeps_the_old_one_until_restart() {
        let new = "spool_dir: /elsewhere\nstate_dir: /st\nlog_dir: /l\nhold_queue: true\n";
        let plan = plan(&parse(BASE), parse(new));
        assert_eq!(plan.restart_needed, vec!["spool_dir"]);
        assert_eq!(plan.effective.spool_dir, PathBuf::from("/s"));
        assert!(plan.effective.hold_queue, "live keys still apply");
    }

    #[test]
    fn changed_gpu_pool_needs_a_restart() {
        let new = format!("{BASE}gpu_pool: {{ kind: cpu, slots: 3 }}\n");
        let plan = plan(&parse(BASE), parse(&new));
        assert_eq!(plan.restart_needed, vec!["gpu_pool"]);
        assert!(differs(&plan.effective.gpu_pool, &parse(&new).gpu_pool));
    }

    #[test]
    fn changed_worker_timeouts_apply_to_new_workers() {
        let new = format!("{BASE}worker: {{ stop_timeout_secs: 5 }}\n");
        let plan = plan(&parse(BASE), parse(&new));
        assert_eq!(plan.applied, vec!["worker"]);
        assert_eq!(plan.effective.worker.stop_timeout_secs, 5);
    }
}
