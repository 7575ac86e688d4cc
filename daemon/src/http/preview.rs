//! A job's live preview, kept in `<job dir>/preview/`: every finished clip's segment
//! (`work/clips/<k>.mkv`, written by the worker) remuxed without re-encoding into `<k>.ts`,
//! listed in an HLS event playlist; a small JPEG per clip (`<k>.jpg`, its last frame); and the
//! poster of the finished video (`poster.jpg`, its first frame).
//!
//! Nothing is made until someone looks: a playlist request remuxes the clips finished since the
//! last one (a few milliseconds each), a thumbnail request decodes that one clip. The folder
//! holds only names made here; `index.json` remembers each segment's frames and which clip file
//! it came from, so a clip rendered again (a job started over) replaces its segment. Every
//! file is reached through `safe_fs`: a symlink anywhere under the job folder is refused.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::safe_fs::{fd_path, Dir};
use super::shared::ApiError;

/// The preview's folder in a job's folder.
pub const PREVIEW_DIR: &str = "preview";
const INDEX: &str = "index.json";
const POSTER: &str = "poster.jpg";
const INDEX_FORMAT: u32 = 1;
/// At most this many clips are remuxed for one request (the first look at a long job); the
/// playlist grows by the rest on the player's next reloads.
const MAX_NEW_PER_REQUEST: usize = 48;

/// One segment of the playlist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub frames: u64,
    pub fps: u32,
    /// Which clip file it was made from (inode, size, modification time).
    source: String,
}

impl Segment {
    pub fn secs(&self) -> f64 {
        self.frames as f64 / f64::from(self.fps.max(1))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    format: u32,
    segments: Vec<Segment>,
}

fn not_found(what: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, what)
}

/// Absent is 404; a symlink or something other than a plain file where one should be is 403
/// (never served); anything else is the daemon's own failure.
pub fn io_error(what: &str, err: io::Error) -> ApiError {
    if err.kind() == io::ErrorKind::NotFound {
        not_found(format!("{what}: not there (yet)"))
    } else if err.raw_os_error() == Some(libc::ELOOP) || err.kind() == io::ErrorKind::InvalidInput {
        ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{what}: not served, it is a symlink or not a plain file"),
        )
    } else {
        ApiError::internal(format!("{what}: {err}"))
    }
}

/// The clip files' folder of a job, when the worker made one.
fn clips_dir(job: &Dir) -> io::Result<Option<Dir>> {
    match job.subdir("work").and_then(|work| work.subdir("clips")) {
        Ok(dir) => Ok(Some(dir)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

fn identity(file: &File) -> io::Result<String> {
    let meta = file.metadata()?;
    Ok(format!(
        "{}-{}-{}.{}",
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}

fn read_index(preview: &Dir) -> Index {
    let mut text = String::new();
    let read = preview
        .open_file(INDEX)
        .and_then(|mut file| file.read_to_string(&mut text));
    match read {
        Ok(_) => serde_json::from_str::<Index>(&text)
            .ok()
            .filter(|index| index.format == INDEX_FORMAT)
            .unwrap_or_default(),
        Err(_) => Index::default(),
    }
}

/// Brings `preview/` up to date with the finished clips and returns the playlist's segments,
/// clip 0 first. Clips are taken in order up to the first one missing.
pub fn update_segments(job: &Dir) -> Result<Vec<Segment>, ApiError> {
    let Some(clips) = clips_dir(job).map_err(|e| io_error("the job's clips", e))? else {
        return Ok(Vec::new());
    };
    let preview = job
        .subdir_or_create(PREVIEW_DIR)
        .map_err(|e| io_error("the preview folder", e))?;
    let mut index = read_index(&preview);
    let mut changed = false;
    let mut made = 0;
    let mut first_frame = 0u64;
    for k in 0usize.. {
        let clip = match clips.open_file(&format!("{k}.mkv")) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => break,
            Err(err) => {
                warn!(clip = k, error = %err, "a clip segment cannot be opened for the preview");
                break;
            }
        };
        let source = identity(&clip).map_err(|e| io_error("a clip segment", e))?;
        let have = index.segments.get(k).is_some_and(|s| s.source == source)
            && preview.open_file(&format!("{k}.ts")).is_ok();
        if !have {
            if made == MAX_NEW_PER_REQUEST {
                index.segments.truncate(k);
                break;
            }
            let (bytes, info) = match render::media::remux_to_mpegts(&fd_path(&clip), first_frame) {
                Ok(remuxed) => remuxed,
                Err(err) => {
                    warn!(clip = k, error = %err, "cannot remux a clip for the preview");
                    index.segments.truncate(k);
                    changed = true;
                    break;
                }
            };
            preview
                .write_atomic(&format!("{k}.ts"), &bytes)
                .map_err(|e| io_error("a preview segment", e))?;
            index.segments.truncate(k);
            index.segments.push(Segment {
                frames: info.frames,
                fps: info.fps,
                source,
            });
            changed = true;
            made += 1;
        }
        first_frame += index.segments[k].frames;
    }
    if changed {
        index.format = INDEX_FORMAT;
        let text = serde_json::to_vec(&index).map_err(ApiError::internal)?;
        preview
            .write_atomic(INDEX, &text)
            .map_err(|e| io_error("the preview index", e))?;
    }
    Ok(index.segments)
}

/// How long one clip of the job is, in seconds (`render.infer_frames / render.fps` from the
/// job's `job.yaml`), when it can be read.
pub fn clip_secs(job: &Dir) -> Option<f64> {
    let mut text = String::new();
    job.open_file("job.yaml")
        .and_then(|mut file| file.read_to_string(&mut text))
        .ok()?;
    let spec: jobs::spec::JobSpec = serde_yaml::from_str(&text).ok()?;
    Some(f64::from(spec.render.infer_frames) / f64::from(spec.render.fps.max(1)))
}

/// The HLS playlist of `segments` (served at `/jobs/{id}/live.m3u8`, segments at
/// `live/<k>.ts` beside it); closed with `EXT-X-ENDLIST` once the job has ended. The target
/// duration, which must not change while the playlist grows, comes from the clip length
/// (`clip_secs`) when known, so it is right before the first clip is there.
pub fn playlist(segments: &[Segment], ended: bool, clip_secs: Option<f64>) -> String {
    let longest = segments
        .iter()
        .map(Segment::secs)
        .fold(clip_secs.unwrap_or(1.0).max(1.0), f64::max);
    let mut text = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:EVENT\n",
        longest.ceil() as u64
    );
    for (k, segment) in segments.iter().enumerate() {
        text.push_str(&format!("#EXTINF:{:.3},\nlive/{k}.ts\n", segment.secs()));
    }
    if ended {
        text.push_str("#EXT-X-ENDLIST\n");
    }
    text
}

/// The clip number in a segment name the daemon makes (`<k>.ts`, `<k>.jpg`): digits only,
/// no leading zero, so each clip has exactly one name.
pub fn clip_number(name: &str, extension: &str) -> Option<u32> {
    let digits = name.strip_suffix(extension)?;
    let valid = !digits.is_empty()
        && digits.len() <= 9
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    valid.then(|| digits.parse().ok()).flatten()
}

/// A preview segment, for serving.
pub fn segment_file(job: &Dir, k: u32) -> Result<File, ApiError> {
    job.subdir(PREVIEW_DIR)
        .and_then(|preview| preview.open_file(&format!("{k}.ts")))
        .map_err(|e| io_error(&format!("preview segment {k}"), e))
}

/// The thumbnail of clip `k` (its last frame), made on first request and again when the clip
/// file is newer than it.
pub fn clip_thumbnail(job: &Dir, k: u32) -> Result<File, ApiError> {
    let clips = clips_dir(job)
        .map_err(|e| io_error("the job's clips", e))?
        .ok_or_else(|| not_found("the job has no clips yet"))?;
    let clip = clips
        .open_file(&format!("{k}.mkv"))
        .map_err(|e| io_error(&format!("clip {k}"), e))?;
    let preview = job
        .subdir_or_create(PREVIEW_DIR)
        .map_err(|e| io_error("the preview folder", e))?;
    let name = format!("{k}.jpg");
    let clip_time = clip.metadata().and_then(|m| m.modified()).ok();
    if let Ok(existing) = preview.open_file(&name) {
        let made = existing.metadata().and_then(|m| m.modified()).ok();
        if made.is_some() && made >= clip_time {
            return Ok(existing);
        }
    }
    let jpeg = render::media::frame_jpeg(&fd_path(&clip), u64::MAX).map_err(|err| {
        ApiError::internal(format!("cannot make the thumbnail of clip {k}: {err}"))
    })?;
    preview
        .write_atomic(&name, &jpeg)
        .map_err(|e| io_error("a thumbnail", e))?;
    preview
        .open_file(&name)
        .map_err(|e| io_error("a thumbnail", e))
}

/// The poster frame: the first frame of clip 0, or of `video` (the finished video, already
/// checked to lie under the output roots) when the clips are gone. Made once.
pub fn poster(job: &Dir, video: Option<File>) -> Result<File, ApiError> {
    let preview = job
        .subdir_or_create(PREVIEW_DIR)
        .map_err(|e| io_error("the preview folder", e))?;
    if let Ok(existing) = preview.open_file(POSTER) {
        return Ok(existing);
    }
    let first_clip = clips_dir(job)
        .ok()
        .flatten()
        .and_then(|clips| clips.open_file("0.mkv").ok());
    let source = first_clip
        .or(video)
        .ok_or_else(|| not_found("the job has neither a clip nor a video to take a poster from"))?;
    let jpeg = render::media::frame_jpeg(&fd_path(&source), 0)
        .map_err(|err| ApiError::internal(format!("cannot make the poster: {err}")))?;
    preview
        .write_atomic(POSTER, &jpeg)
        .map_err(|e| io_error("the poster", e))?;
    preview
        .open_file(POSTER)
        .map_err(|e| io_error("the poster", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_the_daemon_makes_are_clip_numbers() {
        assert_eq!(clip_number("0.ts", ".ts"), Some(0));
        assert_eq!(clip_number("12.ts", ".ts"), Some(12));
        assert_eq!(clip_number("3.jpg", ".jpg"), Some(3));
        for name in [
            "../0.ts",
            "00.ts",
            "01.ts",
            ".ts",
            "1.ts.partial",
            "-1.ts",
            "+1.ts",
            "1 .ts",
            "index.json",
            "1.jpg",
            "9999999999.ts",
        ] {
            assert_eq!(clip_number(name, ".ts"), None, "{name}");
        }
    }

    #[test]
    fn the_playlist_grows_and_ends() {
        let segment = |frames| Segment {
            frames,
            fps: 16,
            source: String::new(),
        };
        let open = playlist(&[segment(40), segment(40)], false, None);
        assert!(open.starts_with("#EXTM3U\n"), "{open}");
        assert!(open.contains("#EXT-X-PLAYLIST-TYPE:EVENT"));
        assert!(open.contains("#EXT-X-TARGETDURATION:3\n"), "{open}");
        assert!(open.contains("#EXTINF:2.500,\nlive/0.ts\n#EXTINF:2.500,\nlive/1.ts\n"));
        assert!(!open.contains("ENDLIST"));
        let ended = playlist(&[segment(40)], true, None);
        assert!(ended.ends_with("#EXT-X-ENDLIST\n"), "{ended}");
        assert!(playlist(&[], false, None).contains("#EXT-X-TARGETDURATION:1\n"));
        // Before the first clip, the clip length sets it already.
        assert!(playlist(&[], false, Some(3.2)).contains("#EXT-X-TARGETDURATION:4\n"));
    }

    #[test]
    fn a_symlinked_clip_is_not_previewed() {
        let root = tempfile::tempdir().expect("temp dir");
        let job = root.path().join("job");
        std::fs::create_dir_all(job.join("work/clips")).expect("dirs");
        let secret = root.path().join("secret.mkv");
        std::fs::write(&secret, "not yours").expect("write");
        std::os::unix::fs::symlink(&secret, job.join("work/clips/0.mkv")).expect("symlink");
        let dir = super::super::safe_fs::job_dir(root.path(), "job").expect("job");
        assert_eq!(update_segments(&dir).expect("no error, no segment"), vec![]);
        assert!(clip_thumbnail(&dir, 0).is_err());
        assert!(poster(&dir, None).is_err());
        assert!(!job.join("preview/0.ts").exists());
    }
}
