//! How many clips a job has and how many of each clip's frames belong in the video.

use std::time::Duration;

use jobs::spec::NumClip;

/// The clip plan of a job: how many clips, and how many frames the video has in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipPlan {
    pub clips: u32,
    pub frames_per_clip: u32,
    /// Frames clip 0 has fewer than the others (Live Avatar: 3, the tiny model: 0).
    pub first_clip_shortfall: u32,
    pub total_frames: u64,
}

impl ClipPlan {
    /// `auto`: enough clips to cover the audio at the output rate, the last one trimmed so the
    /// video ends with the speech. A count: exactly that many full clips.
    pub fn new(num_clip: NumClip, frames_per_clip: u32, fps: u32, audio: Duration) -> ClipPlan {
        let frames = (audio.as_secs_f64() * f64::from(fps)).round().max(1.0) as u64;
        ClipPlan::with_first_clip_shortfall(num_clip, frames_per_clip, 0, frames)
    }

    /// [`ClipPlan::new`] for an engine whose clip 0 has `shortfall` frames fewer than
    /// `frames_per_clip`, with the audio lasting `audio_frames` video frames.
    pub fn with_first_clip_shortfall(
        num_clip: NumClip,
        frames_per_clip: u32,
        shortfall: u32,
        audio_frames: u64,
    ) -> ClipPlan {
        let shortfall = shortfall.min(frames_per_clip.saturating_sub(1));
        let per_clip = u64::from(frames_per_clip.max(1));
        let (clips, total_frames) = match num_clip {
            NumClip::Count(clips) => (
                clips,
                (u64::from(clips) * per_clip).saturating_sub(u64::from(shortfall)),
            ),
            NumClip::Auto => {
                let frames = audio_frames.max(1);
                let clips = (frames + u64::from(shortfall)).div_ceil(per_clip);
                (u32::try_from(clips).unwrap_or(u32::MAX), frames)
            }
        };
        ClipPlan {
            clips,
            frames_per_clip,
            first_clip_shortfall: shortfall,
            total_frames,
        }
    }

    /// Frames the engine makes for clip `index`.
    fn clip_len(&self, index: u32) -> u64 {
        let full = u64::from(self.frames_per_clip);
        if index == 0 {
            full - u64::from(self.first_clip_shortfall)
        } else {
            full
        }
    }

    /// Frames of clip `index` that belong in the video.
    pub fn frames_in_clip(&self, index: u32) -> u32 {
        let start =
            (u64::from(index) * u64::from(self.frames_per_clip)).saturating_sub(if index == 0 {
                0
            } else {
                u64::from(self.first_clip_shortfall)
            });
        self.total_frames
            .saturating_sub(start)
            .min(self.clip_len(index)) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_plan_covers_the_audio_and_trims_the_last_clip() {
        let plan = ClipPlan::new(NumClip::Auto, 16, 16, Duration::from_millis(5030));
        assert_eq!(plan.total_frames, 80);
        assert_eq!(plan.clips, 5);
        assert_eq!(plan.frames_in_clip(4), 16);
        let plan = ClipPlan::new(NumClip::Auto, 16, 16, Duration::from_millis(4500));
        assert_eq!(plan.total_frames, 72);
        assert_eq!(plan.clips, 5);
        assert_eq!(plan.frames_in_clip(4), 8);
    }

    #[test]
    fn a_short_first_clip_is_counted_and_the_video_cut_at_the_audio() {
        // 40 frames of speech, 16-frame clips whose first makes 13: 13 + 16 + 11.
        let plan = ClipPlan::with_first_clip_shortfall(NumClip::Auto, 16, 3, 40);
        assert_eq!((plan.clips, plan.total_frames), (3, 40));
        let frames: Vec<u32> = (0..plan.clips).map(|k| plan.frames_in_clip(k)).collect();
        assert_eq!(frames, vec![13, 16, 11]);
        // 45 frames fill three clips exactly; 46 need a fourth with one frame.
        let plan = ClipPlan::with_first_clip_shortfall(NumClip::Auto, 16, 3, 45);
        assert_eq!((plan.clips, plan.frames_in_clip(2)), (3, 16));
        let plan = ClipPlan::with_first_clip_shortfall(NumClip::Auto, 16, 3, 46);
        assert_eq!((plan.clips, plan.frames_in_clip(3)), (4, 1));
        // A count renders whole clips: the first still makes 3 frames fewer.
        let plan = ClipPlan::with_first_clip_shortfall(NumClip::Count(2), 48, 3, 1000);
        assert_eq!((plan.total_frames, plan.frames_in_clip(0)), (93, 45));
    }

    #[test]
    fn counted_plan_renders_full_clips_whatever_the_audio() {
        let plan = ClipPlan::new(NumClip::Count(3), 32, 16, Duration::from_secs(60));
        assert_eq!(plan.total_frames, 96);
        assert_eq!(plan.frames_in_clip(2), 32);
    }
}
