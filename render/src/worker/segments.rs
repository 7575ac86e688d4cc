//! A clip's segment: encoded into `work/clips/<k>.mkv` so that it appears whole or not at all,
//! with the clip's last frame beside it as the dashboard's thumbnail; and a segment rendered
//! again after a resume, kept when its bytes come out the same.

use std::path::{Path, PathBuf};

use tracing::warn;

use super::crash_point;
use super::report::{Failure, Reporter};
use crate::checkpoint::{file_sha256, replace_durably, CLIPS_DIR, RERENDER_INFIX};
use crate::media;
use crate::protocol::{CheckpointNote, FailureKind, WorkerMessage};

/// Where clip `index`'s segment goes: `work/clips/<index>.mkv`.
pub(super) fn segment_path(work: &Path, index: u32) -> PathBuf {
    work.join(CLIPS_DIR).join(format!("{index}.mkv"))
}

/// Where clip `index`'s latents wait for decoding when online decode is off.
pub(super) fn latents_path(work: &Path, index: u32) -> PathBuf {
    work.join("latents").join(format!("{index}.safetensors"))
}

pub(super) fn write_segment(
    clip: u32,
    path: &Path,
    settings: &media::EncodeSettings,
    frames: &[Vec<u8>],
    keep: u32,
) -> Result<(), Failure> {
    write_segment_as(
        clip,
        path,
        &path.with_extension("jpg"),
        settings,
        frames,
        keep,
    )
}

/// Writes clip `clip`, rendered again after a resume, where a segment of it already is: the
/// new encoding goes beside it and replaces it only if the bytes differ. They never should
/// (the render is deterministic and the encoder bit-exact); if they do, the job gets a
/// `segment_differs` event and the new segment is kept, so the video matches this render.
pub(super) fn write_segment_again(
    clip: u32,
    path: &Path,
    settings: &media::EncodeSettings,
    frames: &[Vec<u8>],
    keep: u32,
    reporter: &Reporter,
) -> Result<(), Failure> {
    let again = path.with_file_name(format!("{clip}{}mkv", RERENDER_INFIX));
    write_segment_as(
        clip,
        &again,
        &path.with_extension("jpg"),
        settings,
        frames,
        keep,
    )?;
    let digest = |file: &Path| {
        file_sha256(file).map_err(|err| {
            Failure::new(
                FailureKind::Io,
                format!("cannot read {}: {err}", file.display()),
            )
        })
    };
    let (old, new) = (digest(path)?, digest(&again)?);
    if old == new {
        std::fs::remove_file(&again).map_err(|err| {
            Failure::new(
                FailureKind::Io,
                format!("cannot remove {}: {err}", again.display()),
            )
        })?;
        tracing::debug!(
            clip,
            "segment rendered again came out the same; kept the one on disk"
        );
        return Ok(());
    }
    let detail = format!(
        "clip {clip} rendered again differs from its segment on disk (sha256 {old} before, \
         {new} now); replaced it"
    );
    warn!(clip, "{detail}");
    reporter.send(&WorkerMessage::Checkpoint {
        note: CheckpointNote::SegmentDiffers,
        clip,
        detail,
    });
    replace_durably(&again, path).map_err(|err| {
        Failure::new(
            FailureKind::Io,
            format!(
                "cannot move {} to {}: {err}",
                again.display(),
                path.display()
            ),
        )
    })
}

fn write_segment_as(
    clip: u32,
    path: &Path,
    thumbnail: &Path,
    settings: &media::EncodeSettings,
    frames: &[Vec<u8>],
    keep: u32,
) -> Result<(), Failure> {
    let mut encoder = media::ClipEncoder::create(path, settings)
        .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?;
    for (pushed, frame) in frames.iter().take(keep as usize).enumerate() {
        encoder
            .push_frame(frame)
            .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?;
        if pushed + 1 == (keep as usize).div_ceil(2) {
            crash_point::reached("mid_encode", clip);
        }
    }
    encoder
        .finish()
        .map_err(|err| Failure::new(FailureKind::Io, err.to_string()))?;
    // The dashboard's picture of the job: the clip's last frame, beside the segment. Only a
    // view, so a failure costs a warning, never the clip.
    if let Some(last) = frames.iter().take(keep as usize).next_back() {
        if let Err(err) = media::write_thumbnail(thumbnail, last, settings.width, settings.height) {
            tracing::warn!(clip, error = %err, "cannot write the clip's thumbnail");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(shade: u8) -> Vec<Vec<u8>> {
        (0..4u8)
            .map(|k| vec![shade.wrapping_add(k * 16); 64 * 64 * 3])
            .collect()
    }

    fn reporter() -> Reporter {
        Reporter::stdout()
    }

    #[test]
    fn a_segment_rendered_again_the_same_is_kept_as_it_was() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("3.mkv");
        let settings = media::EncodeSettings::new(64, 64, 16, media::VideoCodec::H264, 18);
        write_segment(3, &path, &settings, &frames(40), 4).expect("first encode");
        let before = std::fs::metadata(&path).expect("segment");
        let bytes = std::fs::read(&path).expect("segment");
        write_segment_again(3, &path, &settings, &frames(40), 4, &reporter()).expect("again");
        let after = std::fs::metadata(&path).expect("segment");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            before.ino(),
            after.ino(),
            "the file on disk was not replaced"
        );
        assert_eq!(std::fs::read(&path).expect("segment"), bytes);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.contains(crate::checkpoint::RERENDER_INFIX)),
            "{names:?}"
        );
    }

    #[test]
    fn a_segment_rendered_again_differently_replaces_the_old_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("3.mkv");
        let settings = media::EncodeSettings::new(64, 64, 16, media::VideoCodec::H264, 18);
        write_segment(3, &path, &settings, &frames(40), 4).expect("first encode");
        let old = std::fs::read(&path).expect("segment");
        write_segment(3, &dir.path().join("ref.mkv"), &settings, &frames(200), 4)
            .expect("reference encode");
        write_segment_again(3, &path, &settings, &frames(200), 4, &reporter()).expect("again");
        let new = std::fs::read(&path).expect("segment");
        assert_ne!(new, old);
        assert_eq!(
            new,
            std::fs::read(dir.path().join("ref.mkv")).expect("reference")
        );
    }
}
