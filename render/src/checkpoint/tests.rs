use super::*;
use crate::engine::test_support::small_settings;
use std::io::Write;

const JOB: &str = "fingerprint-of-job-a";

/// A work directory with a store, and a way to "render" clips: write a segment, then save.
struct Job {
    _dir: tempfile::TempDir,
    store: CheckpointStore,
}

impl Job {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = CheckpointStore::new(dir.path());
        Job { _dir: dir, store }
    }

    fn carry_after(clip: u32) -> EngineCarry {
        let mut carry = EngineCarry::initial(&small_settings(5));
        carry.next_clip = clip + 1;
        for (i, v) in carry.motion.data.iter_mut().enumerate() {
            *v = (clip as f32) + i as f32 * 0.001;
        }
        carry
    }

    fn finish_clip(&self, clip: u32) {
        let segment = self.store.segment_path(ClipIndex(clip));
        std::fs::create_dir_all(segment.parent().expect("segments have a parent"))
            .expect("clips dir");
        std::fs::write(
            &segment,
            format!("segment {clip} ").repeat(clip as usize + 3),
        )
        .expect("segment");
        self.store
            .save(ClipIndex(clip), &Self::carry_after(clip), JOB, &segment)
            .expect("checkpoint saves");
    }

    fn path(&self, name: &str) -> PathBuf {
        self.store.work_dir().join(name)
    }

    fn resume(&self) -> ResumePoint {
        self.store.resume(JOB).expect("resume reads the work dir")
    }
}

fn resumed_after(point: &ResumePoint) -> u32 {
    match point {
        ResumePoint::After {
            last_clip, carry, ..
        } => {
            assert_eq!(carry.next_clip().0, last_clip.0 + 1);
            assert_eq!(carry, &Job::carry_after(last_clip.0));
            last_clip.0
        }
        ResumePoint::Fresh { reason } => panic!("expected a resume point, got fresh: {reason:?}"),
    }
}

#[test]
fn empty_work_dir_starts_fresh_without_a_reason() {
    let job = Job::new();
    assert_eq!(job.resume(), ResumePoint::Fresh { reason: None });
}

#[test]
fn resume_continues_after_the_last_saved_clip_with_its_carry() {
    let job = Job::new();
    for clip in 0..4 {
        job.finish_clip(clip);
    }
    assert_eq!(resumed_after(&job.resume()), 3);
}

#[test]
fn checkpoint_records_every_segment_with_size_and_hash() {
    let job = Job::new();
    job.finish_clip(0);
    job.finish_clip(1);
    let cp: Checkpoint =
        serde_json::from_slice(&std::fs::read(job.path(CHECKPOINT_FILE)).expect("exists"))
            .expect("parses");
    assert_eq!(cp.last_clip, 1);
    assert_eq!(cp.job_fingerprint, JOB);
    assert_eq!(cp.carry.file, "carry-1.safetensors");
    let files: Vec<_> = cp
        .segments
        .iter()
        .map(|s| (s.clip, s.file.file.as_str()))
        .collect();
    assert_eq!(files, vec![(0, "clips/0.mkv"), (1, "clips/1.mkv")]);
    let segment_1 = std::fs::metadata(job.path("clips/1.mkv")).expect("segment exists");
    assert_eq!(cp.segments[1].file.size_bytes, segment_1.len());
    assert_eq!(cp.segments[1].file.sha256.len(), 64);
}

#[test]
fn changed_job_starts_fresh_and_clears_old_work() {
    let job = Job::new();
    job.finish_clip(0);
    job.finish_clip(1);
    let point = job
        .store
        .resume("fingerprint-of-edited-job")
        .expect("resume");
    assert_eq!(
        point,
        ResumePoint::Fresh {
            reason: Some("job changed since checkpoint".to_string())
        }
    );
    assert!(!job.path(CHECKPOINT_FILE).exists());
    assert!(!job.path("clips/0.mkv").exists());
    assert!(!job.path("carry-1.safetensors").exists());
}

#[test]
fn damaged_checkpoint_json_falls_back_to_the_previous_one() {
    let job = Job::new();
    for clip in 0..3 {
        job.finish_clip(clip);
    }
    std::fs::write(
        job.path(CHECKPOINT_FILE),
        b"{\"format_version\": 1, \"last_cl",
    )
    .expect("tear it");
    assert_eq!(resumed_after(&job.resume()), 1);
    // The carry of the unusable checkpoint is gone; clip 2's segment stays, for the worker to
    // compare with what it renders again.
    assert!(job.path("clips/2.mkv").exists());
    assert!(!job.path("carry-2.safetensors").exists());
}

#[test]
fn damaged_carry_falls_back_to_the_previous_checkpoint() {
    let job = Job::new();
    for clip in 0..3 {
        job.finish_clip(clip);
    }
    let carry = job.path("carry-2.safetensors");
    let mut bytes = std::fs::read(&carry).expect("carry exists");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&carry, bytes).expect("corrupt carry");
    assert_eq!(resumed_after(&job.resume()), 1);
}

#[test]
fn missing_segment_falls_back_to_the_previous_checkpoint() {
    let job = Job::new();
    for clip in 0..3 {
        job.finish_clip(clip);
    }
    std::fs::remove_file(job.path("clips/2.mkv")).expect("remove segment");
    assert_eq!(resumed_after(&job.resume()), 1);
}

#[test]
fn truncated_older_segment_makes_both_checkpoints_unusable() {
    let job = Job::new();
    for clip in 0..3 {
        job.finish_clip(clip);
    }
    std::fs::write(job.path("clips/0.mkv"), b"short").expect("truncate segment 0");
    match job.resume() {
        ResumePoint::Fresh {
            reason: Some(reason),
        } => assert!(reason.contains("clips/0.mkv"), "{reason}"),
        other => panic!("expected a fresh start with a reason, got {other:?}"),
    }
    assert!(!job.path("clips/1.mkv").exists());
}

#[test]
fn crash_between_keeping_previous_and_writing_latest_resumes_from_previous() {
    let job = Job::new();
    job.finish_clip(0);
    job.finish_clip(1);
    // What save(2) leaves if it dies right after moving checkpoint.json aside.
    std::fs::rename(
        job.path(CHECKPOINT_FILE),
        job.path(PREVIOUS_CHECKPOINT_FILE),
    )
    .expect("rename");
    assert_eq!(resumed_after(&job.resume()), 1);
}

#[test]
fn stray_carries_beyond_the_checkpoint_are_removed_and_later_segments_kept() {
    let job = Job::new();
    job.finish_clip(0);
    job.finish_clip(1);
    std::fs::write(job.path("clips/2.mkv"), b"a whole clip").expect("later segment");
    std::fs::write(job.path("clips/2.again.mkv"), b"a clip again").expect("stray again");
    std::fs::write(job.path("carry-2.safetensors"), b"stray carry").expect("stray carry");
    std::fs::write(job.path(".checkpoint.json.abc123.tmp"), b"torn").expect("stray temp");
    std::fs::write(job.path("clips/notes.txt"), b"not ours").expect("unrelated file");
    assert_eq!(resumed_after(&job.resume()), 1);
    // Segments are renamed into place whole; a later one is compared when rendered again.
    assert!(job.path("clips/2.mkv").exists());
    assert!(!job.path("clips/2.again.mkv").exists());
    assert!(!job.path("carry-2.safetensors").exists());
    assert!(!job.path(".checkpoint.json.abc123.tmp").exists());
    assert!(job.path("clips/notes.txt").exists());
    assert!(job.path("clips/1.mkv").exists());
}

#[test]
fn partial_segment_of_a_killed_encoder_is_removed_on_resume() {
    let job = Job::new();
    job.finish_clip(0);
    std::fs::write(job.path("clips/.1.mkv.partial"), b"half encoded").expect("torn segment");
    assert_eq!(resumed_after(&job.resume()), 0);
    assert!(!job.path("clips/.1.mkv.partial").exists());
    assert!(job.path("clips/0.mkv").exists());
}

#[test]
fn carries_older_than_the_previous_checkpoint_are_deleted() {
    let job = Job::new();
    for clip in 0..4 {
        job.finish_clip(clip);
    }
    assert!(!job.path("carry-0.safetensors").exists());
    assert!(!job.path("carry-1.safetensors").exists());
    assert!(
        job.path("carry-2.safetensors").exists(),
        "the previous checkpoint needs it"
    );
    assert!(job.path("carry-3.safetensors").exists());
}

#[test]
fn saving_continues_correctly_after_a_fallback() {
    let job = Job::new();
    for clip in 0..3 {
        job.finish_clip(clip);
    }
    std::fs::write(job.path(CHECKPOINT_FILE), b"garbage").expect("damage");
    assert_eq!(resumed_after(&job.resume()), 1);
    job.finish_clip(2);
    job.finish_clip(3);
    assert_eq!(resumed_after(&job.resume()), 3);
    std::fs::write(job.path(CHECKPOINT_FILE), b"garbage").expect("damage again");
    assert_eq!(resumed_after(&job.resume()), 2);
}

#[test]
fn saving_a_clip_without_its_predecessor_is_refused() {
    let job = Job::new();
    job.finish_clip(0);
    let segment = job.store.segment_path(ClipIndex(2));
    std::fs::write(&segment, b"x").expect("segment");
    let err = job
        .store
        .save(ClipIndex(2), &Job::carry_after(2), JOB, &segment)
        .unwrap_err();
    assert!(matches!(err, RenderError::OutOfOrder { .. }), "{err}");
}

#[test]
fn saving_with_a_carry_for_another_clip_is_refused() {
    let job = Job::new();
    let segment = job.store.segment_path(ClipIndex(0));
    std::fs::create_dir_all(segment.parent().expect("parent")).expect("clips dir");
    std::fs::write(&segment, b"x").expect("segment");
    let err = job
        .store
        .save(ClipIndex(0), &Job::carry_after(4), JOB, &segment)
        .unwrap_err();
    assert!(
        err.to_string().contains("carry continues into clip 5"),
        "{err}"
    );
}

#[test]
fn missing_segment_file_is_an_error_naming_it() {
    let job = Job::new();
    let segment = job.store.segment_path(ClipIndex(0));
    let err = job
        .store
        .save(ClipIndex(0), &Job::carry_after(0), JOB, &segment)
        .unwrap_err();
    assert!(err.to_string().contains("clips/0.mkv"), "{err}");
}

/// Saves clips `0..clips` with a checkpoint every `every` clips (and after the last), the way
/// the worker's writer does; returns the records of every segment.
fn finish_clips_every(job: &Job, clips: u32, every: u32, identity: &CarrySettings) {
    let mut segments = Vec::new();
    for clip in 0..clips {
        let segment = job.store.segment_path(ClipIndex(clip));
        std::fs::create_dir_all(segment.parent().expect("parent")).expect("clips dir");
        std::fs::write(&segment, format!("segment {clip}")).expect("segment");
        segments.push(
            job.store
                .segment_record(ClipIndex(clip), &segment)
                .expect("record"),
        );
        if (clip + 1) % every == 0 || clip + 1 == clips {
            let bytes = Job::carry_after(clip)
                .to_safetensors_bytes()
                .expect("serialises");
            job.store
                .save_prepared(
                    ClipIndex(clip),
                    &bytes,
                    JOB,
                    Some(identity),
                    segments.clone(),
                )
                .expect("checkpoint saves");
        }
    }
}

fn identity(seed: u64) -> CarrySettings {
    CarrySettings {
        model: "builtin:tiny".to_string(),
        width: 64,
        height: 48,
        seed,
        infer_frames: 8,
    }
}

#[test]
fn every_third_clip_keeps_the_previous_carry_and_resumes_after_the_newest() {
    let job = Job::new();
    finish_clips_every(&job, 8, 3, &identity(5));
    // Checkpoints after clips 2, 5 and 7 (the last): the newest two carries are on disk.
    assert!(!job.path("carry-2.safetensors").exists());
    assert!(job.path("carry-5.safetensors").exists());
    assert!(job.path("carry-7.safetensors").exists());
    let point = job
        .store
        .resume_carry::<EngineCarry>(JOB, Some(&identity(5)))
        .expect("resume");
    assert_eq!(resumed_after(&point), 7);
    assert_eq!(job.store.current_segments().expect("segments").len(), 8);
}

#[test]
fn a_carry_that_fails_its_checksum_falls_back_and_says_why() {
    let job = Job::new();
    finish_clips_every(&job, 7, 3, &identity(5));
    // Newest carry: clip 6 (the last). Damage one byte in its middle.
    let path = job.path("carry-6.safetensors");
    let mut bytes = std::fs::read(&path).expect("carry");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&path, &bytes).expect("damage");
    let point = job
        .store
        .resume_carry::<EngineCarry>(JOB, Some(&identity(5)))
        .expect("resume");
    assert_eq!(resumed_after(&point), 5);
    let ResumePoint::After { fell_back, .. } = point else {
        unreachable!("resumed_after checked it")
    };
    let why = fell_back.expect("a fallback says why");
    assert!(why.contains("carry-6.safetensors"), "{why}");
    assert!(why.contains("sha256"), "{why}");
    assert!(why.contains("after clip 5"), "{why}");
    // Clip 6's segment stays for the comparison; its carry is gone.
    assert!(job.path("clips/6.mkv").exists());
    assert!(!path.exists());
}

#[test]
fn a_truncated_newest_carry_falls_back_too() {
    let job = Job::new();
    finish_clips_every(&job, 6, 3, &identity(5));
    let path = job.path("carry-5.safetensors");
    let bytes = std::fs::read(&path).expect("carry");
    std::fs::write(&path, &bytes[..bytes.len() / 3]).expect("truncate");
    let point = job
        .store
        .resume_carry::<EngineCarry>(JOB, Some(&identity(5)))
        .expect("resume");
    assert_eq!(resumed_after(&point), 2);
}

#[test]
fn a_carry_of_another_seed_model_or_size_is_refused_naming_the_difference() {
    for (job_identity, expected) in [
        (identity(6), "seed 5 (this job: 6)"),
        (
            CarrySettings {
                model: "/models/other".to_string(),
                ..identity(5)
            },
            "model `builtin:tiny` (this job: `/models/other`)",
        ),
        (
            CarrySettings {
                width: 128,
                ..identity(5)
            },
            "size 64*48 (this job: 128*48)",
        ),
    ] {
        let job = Job::new();
        finish_clips_every(&job, 4, 2, &identity(5));
        let point = job
            .store
            .resume_carry::<EngineCarry>(JOB, Some(&job_identity))
            .expect("resume");
        let ResumePoint::Fresh {
            reason: Some(reason),
        } = point
        else {
            panic!("a foreign carry must not be used: {point:?}");
        };
        assert!(reason.contains("refused"), "{reason}");
        assert!(reason.contains(expected), "{reason}");
        assert!(!job.path(CHECKPOINT_FILE).exists());
        assert!(!job.path("carry-3.safetensors").exists());
    }
}

#[test]
fn segment_records_that_skip_a_clip_are_refused() {
    let job = Job::new();
    finish_clips_every(&job, 2, 1, &identity(5));
    let segments = job.store.current_segments().expect("segments");
    let bytes = Job::carry_after(3).to_safetensors_bytes().expect("carry");
    let err = job
        .store
        .save_prepared(ClipIndex(3), &bytes, JOB, Some(&identity(5)), segments)
        .unwrap_err();
    assert!(matches!(err, RenderError::OutOfOrder { .. }), "{err}");
}

/// A carry streamed into its file by the engine is recorded with the size and hash of what
/// the file holds, resumes through a mapping of that file, and a writer that claims more
/// bytes than it wrote fails the checkpoint and keeps the one before.
#[test]
fn a_streamed_carry_resumes_like_one_written_from_memory() {
    let job = Job::new();
    job.finish_clip(0);
    let bytes = Job::carry_after(1)
        .to_safetensors_bytes()
        .expect("carry bytes");
    let segment = job.store.segment_path(ClipIndex(1));
    std::fs::write(&segment, b"segment 1").expect("segment");
    let mut segments = job.store.current_segments().expect("segments of clip 0");
    segments.push(
        job.store
            .segment_record(ClipIndex(1), &segment)
            .expect("record"),
    );

    let mut short = |file: &mut std::fs::File| {
        file.write_all(&bytes[..bytes.len() / 2])?;
        Ok(bytes.len() as u64)
    };
    let err = job
        .store
        .save_from(
            ClipIndex(1),
            CarrySource::Stream {
                expected_bytes: bytes.len() as u64,
                write: &mut short,
            },
            JOB,
            None,
            segments.clone(),
        )
        .expect_err("a short write is no checkpoint");
    assert!(err.to_string().contains("wrote"), "{err}");
    assert_eq!(resumed_after(&job.resume()), 0);

    // Written in pieces, as an engine writes one tensor at a time.
    let mut whole = |file: &mut std::fs::File| {
        for piece in bytes.chunks(97) {
            file.write_all(piece)?;
        }
        Ok(bytes.len() as u64)
    };
    job.store
        .save_from(
            ClipIndex(1),
            CarrySource::Stream {
                expected_bytes: bytes.len() as u64,
                write: &mut whole,
            },
            JOB,
            None,
            segments,
        )
        .expect("streamed checkpoint");
    let cp: Checkpoint =
        serde_json::from_slice(&std::fs::read(job.path(CHECKPOINT_FILE)).expect("json"))
            .expect("checkpoint");
    assert_eq!(cp.carry.size_bytes, bytes.len() as u64);
    assert_eq!(cp.carry.sha256, sha256_hex(&bytes));
    assert_eq!(resumed_after(&job.resume()), 1);
    match job
        .store
        .resume_carry::<CarryFile>(JOB, None)
        .expect("resume")
    {
        ResumePoint::After { carry, .. } => {
            assert!(
                matches!(carry.bytes, CarryBytes::Mapped(_)),
                "{:?}",
                carry.bytes
            );
            assert_eq!(&carry.bytes[..], &bytes[..]);
            assert_eq!(carry.continues_into(), ClipIndex(2));
        }
        other => panic!("expected a resume point: {other:?}"),
    }
}
