//! The worker side of reelspool: engines that turn a job into clips, media in and out
//! (ffmpeg), and the checkpoints that make every clip durable.

pub mod checkpoint;
pub mod engine;
mod error;
pub mod media;
pub mod protocol;
pub mod worker;

pub use error::RenderError;
