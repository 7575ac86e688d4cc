//! Command engines at intake: a job names an engine; the operator's config says what it runs.
//!
//! A job with `engine.kind: command` is accepted only when its `engine.name` is one of the
//! config's `engines:`. The declaration is then written into the job directory
//! (`engine.json`, beside `job.yaml`, where only the daemon writes), and the worker runs what
//! it says. The job file itself never gets to name a program, an argument or an environment
//! variable. Because the declaration is resolved once, a job keeps the engine it was accepted
//! with across restarts and retries, even if the config changes later.

use std::collections::BTreeMap;
use std::path::Path;

use jobs::spec::EngineKind;
use jobs::JobSpec;
use render::engine::external::{EngineDeclaration, ResolvedEngine, RESOLVED_ENGINE_FILE};

/// The operator's engines, by name.
pub type EngineTable = BTreeMap<String, EngineDeclaration>;

/// Checks a parsed job against the configured engines. For a command engine, fills in the
/// engine's memory profile when the job names none, and returns the declaration to store.
pub fn resolve(
    engines: &EngineTable,
    mut spec: JobSpec,
) -> Result<(JobSpec, Option<ResolvedEngine>), String> {
    if spec.engine.kind != EngineKind::Command {
        return Ok((spec, None));
    }
    let Some(name) = spec.engine.name.clone() else {
        // The job parser refuses this already; keep the rule here too.
        return Err("`engine.kind: command` needs `engine.name`".to_string());
    };
    let Some(declaration) = engines.get(&name) else {
        let configured = if engines.is_empty() {
            "this daemon has no engines configured (`engines:` in its config)".to_string()
        } else {
            format!(
                "configured engines: {}",
                engines.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        return Err(format!(
            "engine `{name}` is not configured on this daemon; {configured}\n  = help: set `engine.name:` to a configured engine, or ask the operator to declare `{name}` under `engines:`"
        ));
    };
    if spec.engine.profile.is_none() {
        spec.engine.profile = declaration.profile.clone();
    }
    Ok((
        spec,
        Some(ResolvedEngine {
            name,
            declaration: declaration.clone(),
        }),
    ))
}

/// Writes the resolved declaration into a (staging) job directory.
pub fn write_resolved(job_dir: &Path, resolved: Option<&ResolvedEngine>) -> std::io::Result<()> {
    let Some(resolved) = resolved else {
        return Ok(());
    };
    let json = serde_json::to_vec_pretty(resolved).map_err(std::io::Error::other)?;
    std::fs::write(job_dir.join(RESOLVED_ENGINE_FILE), json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobs::spec::EngineSpec;

    fn spec_with(engine: EngineSpec) -> JobSpec {
        let yaml = "name: t\ninputs: {image: /i.png, audio: /a.wav, prompt: p}\nrender: {size: 64*64, num_clip: 1, infer_frames: 8, sample_steps: 1, guide_scale: 0.0, seed: 1, online_decode: true, offload: auto, fps: 16}\nengine: {kind: native, model: builtin:tiny}\noutput: {path: /o.mp4, codec: h264, crf: 18}\nnotify: {email: [], webhook: [], on: []}\nretry: {max_attempts: 1}\npriority: 0\n";
        let mut spec: JobSpec = serde_yaml::from_str(yaml).expect("test spec parses");
        spec.engine = engine;
        spec
    }

    fn table() -> EngineTable {
        EngineTable::from([(
            "numpy-demo".to_string(),
            EngineDeclaration {
                command: vec![
                    "python3".into(),
                    "/usr/share/reelspool/engines/example_engine.py".into(),
                ],
                env: BTreeMap::new(),
                profile: Some("builtin-tiny".into()),
                working_dir: None,
                heartbeat_timeout_secs: 30,
                stop_grace_secs: render::engine::external::DEFAULT_STOP_GRACE_SECS,
            },
        )])
    }

    #[test]
    fn unknown_engine_is_refused_with_the_configured_names() {
        let spec = spec_with(EngineSpec::new(
            EngineKind::Command,
            Some("torch".into()),
            String::new(),
            None,
        ));
        let err = resolve(&table(), spec).unwrap_err();
        assert!(
            err.contains("`torch` is not configured") && err.contains("numpy-demo"),
            "{err}"
        );
    }

    #[test]
    fn known_engine_resolves_and_lends_its_profile() {
        let spec = spec_with(EngineSpec::new(
            EngineKind::Command,
            Some("numpy-demo".into()),
            "x".into(),
            None,
        ));
        let (spec, resolved) = resolve(&table(), spec).expect("configured engine");
        assert_eq!(spec.engine.profile.as_deref(), Some("builtin-tiny"));
        assert_eq!(resolved.expect("declaration").name, "numpy-demo");
    }

    #[test]
    fn native_jobs_pass_through_untouched() {
        let spec = spec_with(EngineSpec::default());
        let (out, resolved) = resolve(&EngineTable::new(), spec.clone()).expect("native");
        assert_eq!(out, spec);
        assert!(resolved.is_none());
    }
}
