//! The worker side of reelspool: engines that turn a job into clips, media in and out
//! (ffmpeg), and the checkpoints that make every clip durable.
//!
//! Layers, lowest first; a module imports only from its own layer and those below:
//! 1. ground: [`protocol`] (worker ↔ daemon messages), [`media`] (FFmpeg in and out),
//!    [`crash_point`] (the test kill points);
//! 2. [`engine`]: models that turn settings and inputs into clips (built-in, native release,
//!    command engines);
//! 3. [`checkpoint`]: making a clip's carry and the job's progress durable;
//! 4. [`worker`]: the process a job runs in, with the one clip loop.
//!
//! [`RenderError`] is shared by every layer; it names a few engine types (the clip index,
//! the engine protocol's error kinds) in its messages.

pub mod checkpoint;
pub mod crash_point;
pub mod engine;
mod error;
pub mod media;
pub mod protocol;
pub mod worker;

pub use error::RenderError;
