//! The end of a job: the segments concatenated, the speech muxed in, the video moved into
//! place without replacing a file the job did not write.

use std::path::{Path, PathBuf};

use jobs::spec::JobSpec;
use jobs::state::JobDir;
use tracing::warn;

use super::crash_point;
use super::inputs::{Input, Reach};
use super::plan::ClipPlan;
use super::report::Failure;
use super::segments::segment_path;
use crate::media;
use crate::protocol::{FailureKind, WorkerMessage};

/// Concatenates the segments, muxes the audio in and moves the video into place: into the
/// output folder reached from its allowed root without following links, created there with
/// `O_EXCL`, given its owner's rights through the descriptor and renamed within the folder.
pub(super) fn assemble(
    dir: &JobDir,
    spec: &JobSpec,
    work: &Path,
    plan: &ClipPlan,
    reach: &Reach,
    audio: &Input,
) -> Result<WorkerMessage, Failure> {
    crash_point::reached("before_assemble", plan.clips);
    let segments: Vec<PathBuf> = (0..plan.clips).map(|k| segment_path(work, k)).collect();
    let (out_dir, name) = reach.open_output_dir(spec)?;
    let assembly = media::AssemblePlan {
        total_frames: plan.total_frames,
        fps: spec.render.fps,
    };
    let keep = (!spec.output.overwrite).then(|| media::KeepExisting {
        fallback: fallback_output(&spec.output.path, dir.root()),
        record: work.join("placed-outputs"),
    });
    let owner = reach.owner.as_ref();
    // The service writes the video; its owner must be able to read it (mode 0640 and an ACL
    // entry for them; see README "Several users"), set before the file takes its name.
    let finish = |file: &std::fs::File| {
        match owner {
        Some(owner) => jobs::access::leave_readable_by_fd(file, owner).or_else(|err| {
            warn!(path = %jobs::escape_text(&spec.output.path.display().to_string()), error = %err, "cannot make the video readable by its owner");
            Ok(())
        }),
        None => Ok(()),
    }
    };
    let (output, placed) = media::assemble_output_into(
        &segments,
        &audio.fd_path(),
        &assembly,
        media::OutputTarget {
            dir: out_dir,
            name: &name,
            shown: &spec.output.path,
            keep: keep.as_ref(),
            finish: &finish,
        },
    )
    .map_err(|err| Failure::new(FailureKind::Io, audio.name_in(err.to_string())))?;
    let kept_existing = (placed != spec.output.path).then(|| {
        warn!(
            wanted = %jobs::escape_text(&spec.output.path.display().to_string()),
            written = %jobs::escape_text(&placed.display().to_string()),
            "a file appeared at output.path while the job rendered; it was kept and the video written beside it"
        );
        spec.output.path.display().to_string()
    });
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
