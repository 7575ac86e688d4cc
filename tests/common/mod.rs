//! Helpers for the end-to-end tests: a real `reelspool` daemon on a temporary spool, driven
//! only through files and its command line, with waits that poll a condition until a deadline.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub fn reelspool_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_reelspool"))
}

/// Polls `condition` every 20 ms until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A temporary installation: config, spool, state, logs, an input root with media and an
/// output root.
pub struct Farm {
    pub root: tempfile::TempDir,
    pub config: PathBuf,
    pub spool: PathBuf,
    pub state: PathBuf,
    pub media: PathBuf,
    pub out: PathBuf,
}

impl Farm {
    /// `extra` is appended to the generated config (e.g. a `gpu_pool:` section).
    pub fn new(extra: &str) -> Farm {
        let root = tempfile::Builder::new()
            .prefix("reelspool-test-")
            .tempdir()
            .expect("temp dir");
        let base = root.path().canonicalize().expect("canonical temp dir");
        let media = base.join("media");
        let out = base.join("out");
        std::fs::create_dir_all(&media).expect("media dir");
        std::fs::create_dir_all(&out).expect("out dir");
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for file in ["portrait.png", "hello.wav"] {
            std::fs::copy(examples.join(file), media.join(file)).expect("copy example media");
        }
        let config = base.join("reelspool.yaml");
        let text = format!(
            "spool_dir: {b}/spool\nstate_dir: {b}/state\nlog_dir: {b}/logs\n\
             allowed_roots:\n  inputs: [{m}]\n  outputs: [{o}]\n{extra}",
            b = base.display(),
            m = media.display(),
            o = out.display(),
        );
        std::fs::write(&config, text).expect("write config");
        Farm {
            config,
            spool: base.join("spool"),
            state: base.join("state"),
            media,
            out,
            root,
        }
    }

    /// A valid job file text using the shipped media; `render` lines go under `render:`.
    pub fn job_yaml(&self, name: &str, render: &str) -> String {
        format!(
            "name: {name}\ninputs:\n  image: {m}/portrait.png\n  audio: {m}/hello.wav\n  prompt: \"a test\"\n\
             render:\n  size: 64*64\n  infer_frames: 4\n  sample_steps: 1\n{render}\
             output:\n  path: {o}/{name}.mp4\n",
            m = self.media.display(),
            o = self.out.display(),
        )
    }

    /// The daemon's stderr logs so far, for assertion messages.
    pub fn daemon_logs(&self) -> String {
        let mut all = String::new();
        for n in 0..16 {
            if let Ok(text) =
                std::fs::read_to_string(self.root.path().join(format!("daemon-{n}.log")))
            {
                all.push_str(&text);
            }
        }
        all
    }

    pub fn incoming(&self) -> PathBuf {
        self.spool.join("incoming")
    }

    /// Drops a file the way `reelspool submit` does: write in tmp/, rename into incoming/.
    pub fn drop_job(&self, file_name: &str, text: &str) {
        let tmp = self.spool.join("tmp").join(format!("{file_name}.partial"));
        std::fs::create_dir_all(self.spool.join("tmp")).expect("spool tmp");
        std::fs::write(&tmp, text).expect("write job in tmp");
        std::fs::rename(&tmp, self.incoming().join(file_name)).expect("rename into incoming");
    }

    /// Starts the daemon and waits until its spool exists and it has begun watching.
    pub fn start_daemon(&self) -> Daemon {
        self.start_daemon_with_env(&[])
    }

    /// [`Farm::start_daemon`] with extra environment variables for the daemon (and its workers).
    pub fn start_daemon_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::fs::File::create(self.root.path().join(format!("daemon-{n}.log")))
            .expect("daemon log");
        let child = Command::new(reelspool_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("daemon")
            .env("REELSPOOL_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start reelspool daemon");
        let daemon = Daemon { child };
        let lock = self.state.join("daemon.lock");
        wait_for("daemon to take its lock", Duration::from_secs(30), || {
            (lock.exists() && self.incoming().is_dir() && lock_is_held(&lock)).then_some(())
        });
        daemon
    }

    /// Runs a CLI command against this farm's config.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(reelspool_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run reelspool")
    }

    pub fn jobs_dir(&self) -> PathBuf {
        self.state.join("jobs")
    }

    /// All job states on disk.
    pub fn job_states(&self) -> Vec<serde_json::Value> {
        let Ok(entries) = std::fs::read_dir(self.jobs_dir()) else {
            return Vec::new();
        };
        let mut states = Vec::new();
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(entry.path().join("state.json")) {
                if let Ok(value) = serde_json::from_str(&text) {
                    states.push(value);
                }
            }
        }
        states
    }

    /// The state of the job whose source file was `file_name`.
    pub fn job_by_source(&self, file_name: &str) -> Option<serde_json::Value> {
        self.job_states()
            .into_iter()
            .find(|state| state["source_file"] == file_name)
    }

    /// The `.error` text for a rejected file, once it exists.
    pub fn rejection(&self, file_name: &str) -> Option<String> {
        std::fs::read_to_string(
            self.spool
                .join("rejected")
                .join(format!("{file_name}.error")),
        )
        .ok()
    }
}

/// Whether some process holds an flock on `path`.
fn lock_is_held(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own for the duration of the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        // SAFETY: as above.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        false
    } else {
        true
    }
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    pub child: Child,
}

impl Daemon {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("daemon did not stop within {timeout:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Workers outlive a killed daemon (the next one re-adopts them); a test's farm ends its own
/// when it goes, so none renders on into a deleted folder.
impl Drop for Farm {
    fn drop(&mut self) {
        let Ok(base) = self.root.path().canonicalize() else {
            return;
        };
        let prefix = base.as_os_str().as_encoded_bytes().to_vec();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args
                .windows(2)
                .any(|w| w[0] == b"worker" && w[1].starts_with(&prefix))
            {
                // SAFETY: kill() on a worker of this farm, read from /proc.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}
