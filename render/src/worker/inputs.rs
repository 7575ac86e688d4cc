//! A job's files as the worker reaches them: from the allowed root each was found under at
//! intake, without following symlinks, the owner's rights checked on what was opened
//! (`jobs::reach`). Inputs are read through the descriptors opened here (FFmpeg gets
//! `/proc/self/fd/N`, the very file checked), so a swap after the check gives nothing.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use jobs::access::Person;
use jobs::reach::JobRoots;
use jobs::spec::JobSpec;

use super::report::Failure;
use crate::protocol::FailureKind;

/// Who the job acts for and where its walks start, from its `state.json`.
#[derive(Debug, Clone, Default)]
pub(super) struct Reach {
    pub owner: Option<Person>,
    pub roots: JobRoots,
}

fn refused(err: jobs::JobsError) -> Failure {
    // A full or failing disk (making a missing output folder) may pass: the job waits or is
    // retried as for any I/O failure.
    let transient = match &err {
        jobs::JobsError::PathChanged { changed, .. }
        | jobs::JobsError::Io {
            source: changed, ..
        } => {
            matches!(
                changed.raw_os_error(),
                Some(libc::ENOSPC | libc::EDQUOT | libc::EIO)
            )
        }
        _ => false,
    };
    // Otherwise retrying cannot help: the files must be put back as they were (or the job
    // submitted again), so the job fails with the reason.
    let kind = if transient {
        FailureKind::Io
    } else {
        FailureKind::Input
    };
    Failure::new(kind, err.to_string())
}

/// An input file open for reading.
pub(super) struct Input {
    file: File,
    /// Its path in the job, for messages.
    path: PathBuf,
}

impl Input {
    /// A name FFmpeg can open that is exactly this file.
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// The whole file.
    pub fn bytes(&self) -> Result<Vec<u8>, Failure> {
        let fail = |err: std::io::Error| {
            Failure::new(
                FailureKind::Input,
                format!("cannot read {}: {err}", self.path.display()),
            )
        };
        let mut file = &self.file;
        file.seek(SeekFrom::Start(0)).map_err(fail)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(fail)?;
        Ok(bytes)
    }

    /// `message` with the descriptor's name replaced by the file's path.
    pub fn name_in(&self, message: String) -> String {
        message.replace(
            &self.fd_path().display().to_string(),
            &self.path.display().to_string(),
        )
    }
}

/// The job's image and audio, open.
pub(super) struct Inputs {
    pub image: Input,
    pub audio: Input,
}

impl Reach {
    /// Opens the image and the audio of `spec` (see the module docs).
    pub fn open_inputs(&self, spec: &JobSpec) -> Result<Inputs, Failure> {
        let open = |key: &str, root: Option<&PathBuf>, path: &Path| {
            jobs::reach::open_input(key, self.owner.as_ref(), root.map(PathBuf::as_path), path)
                .map(|file| Input {
                    file,
                    path: path.to_path_buf(),
                })
                .map_err(refused)
        };
        Ok(Inputs {
            image: open(
                "inputs.image",
                self.roots.image.as_ref(),
                &spec.inputs.image,
            )?,
            audio: open(
                "inputs.audio",
                self.roots.audio.as_ref(),
                &spec.inputs.audio,
            )?,
        })
    }

    /// Walks to the inputs again (before the video is put together, long after they were
    /// opened): a folder or file on their paths swapped for a link meanwhile fails the job.
    pub fn recheck_inputs(&self, spec: &JobSpec) -> Result<(), Failure> {
        drop(self.open_inputs(spec)?);
        Ok(())
    }

    /// Opens the folder of `output.path` from its root, making missing folders.
    pub fn open_output_dir(
        &self,
        spec: &JobSpec,
    ) -> Result<(atomic_write::Dir, std::ffi::OsString), Failure> {
        jobs::reach::open_output_dir(
            self.owner.as_ref(),
            self.roots.output.as_deref(),
            &spec.output.path,
        )
        .map_err(refused)
    }
}
