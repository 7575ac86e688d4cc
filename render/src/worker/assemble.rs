//! The end of a job: the segments concatenated, the speech muxed in, the video moved into
//! place without replacing a file the job did not write.

use std::path::{Path, PathBuf};

use jobs::spec::JobSpec;
use jobs::state::JobDir;
use tracing::warn;

use super::crash_point;
use super::plan::ClipPlan;
use super::report::Failure;
use super::segments::segment_path;
use crate::media;
use crate::protocol::{FailureKind, WorkerMessage};

/// Concatenates the segments, muxes the audio in and moves the video into place.
pub(super) fn assemble(
    dir: &JobDir,
    spec: &JobSpec,
    work: &Path,
    plan: &ClipPlan,
    owner: Option<&jobs::access::Person>,
) -> Result<WorkerMessage, Failure> {
    crash_point::reached("before_assemble", plan.clips);
    let segments: Vec<PathBuf> = (0..plan.clips).map(|k| segment_path(work, k)).collect();
    if let Some(parent) = spec.output.path.parent() {
        std::fs::create_dir_all(parent).map_err(|err| {
            Failure::new(
                FailureKind::Io,
                format!("cannot create {}: {err}", parent.display()),
            )
        })?;
    }
    let assembly = media::AssemblePlan {
        total_frames: plan.total_frames,
        fps: spec.render.fps,
    };
    let keep = (!spec.output.overwrite).then(|| media::KeepExisting {
        fallback: fallback_output(&spec.output.path, dir.root()),
        record: work.join("placed-outputs"),
    });
    let (output, placed) = media::assemble_output_keeping(
        &segments,
        &spec.inputs.audio,
        &assembly,
        &spec.output.path,
        keep.as_ref(),
    )
    .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?;
    let kept_existing = (placed != spec.output.path).then(|| {
        warn!(
            wanted = %jobs::escape_text(&spec.output.path.display().to_string()),
            written = %jobs::escape_text(&placed.display().to_string()),
            "a file appeared at output.path while the job rendered; it was kept and the video written beside it"
        );
        spec.output.path.display().to_string()
    });
    if let Some(owner) = owner {
        // The service wrote the video; its owner must be able to read it (mode 0640 and an
        // ACL entry for them; see README "Several users").
        if let Err(err) = jobs::access::leave_readable_by(&placed, owner) {
            warn!(path = %jobs::escape_text(&placed.display().to_string()), error = %err, "cannot make the video readable by its owner");
        }
    }
    Ok(WorkerMessage::Finished {
        output: placed.display().to_string(),
        duration_secs: output.duration.as_secs_f64(),
        frames: output.frames,
        clips: plan.clips,
        kept_existing,
    })
}

/// Where the video goes when a file appeared at `output` meanwhile: `<name>.<job id>.<ext>`
/// in the same directory (the job id is the name of the job's directory).
fn fallback_output(output: &Path, job_dir: &Path) -> PathBuf {
    let id = job_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "job".to_string());
    let stem = output
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = output
        .extension()
        .map(|ext| ext.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mp4".to_string());
    output.with_file_name(format!("{stem}.{id}.{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_output_carries_the_job_id_beside_the_wanted_file() {
        assert_eq!(
            fallback_output(
                Path::new("/out/talk.mp4"),
                Path::new("/state/jobs/20261126-7")
            ),
            PathBuf::from("/out/talk.20261126-7.mp4")
        );
    }
}
