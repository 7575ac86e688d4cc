//! Saying how a worker died, with only what the kernel can vouch for.
//!
//! A SIGKILL alone says nothing about who sent it: an operator, a test, a service manager or
//! the kernel's OOM killer. So "out of memory" is only written when the kernel says so: the
//! kernel log names the killed pid (`Killed process <pid>`), or the `oom_kill` counter of the
//! worker's memory cgroup (`memory.events`, or `memory.oom_control` with cgroup v1) went up
//! while the worker ran. Pids are reused, so a kernel log record only counts when it was
//! written after the worker started: an old OOM kill of another process that once had the same
//! pid says nothing about this one.

use std::path::{Path, PathBuf};

/// The name of a signal that ends processes, with its number (`SIGKILL (9)`).
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return format!("signal {signal}"),
    };
    format!("{name} ({signal})")
}

/// The OOM-kill counter of a worker's cgroup, read when it started.
#[derive(Debug, Clone)]
pub struct OomWatch {
    pid: u32,
    events: Option<PathBuf>,
    oom_kills_at_start: Option<u64>,
    /// The kernel log's clock (microseconds of `CLOCK_MONOTONIC`) when the watch began, less a
    /// second of slack; records before it are about some earlier process.
    since_us: u64,
}

/// Slack for the start time of a watch: the worker was spawned a moment before its watch began.
const START_SLACK_US: u64 = 1_000_000;

/// Now on the clock the kernel log stamps its records with, in microseconds.
fn monotonic_us() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one timespec into the value we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(now.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000).saturating_add(nanos / 1_000)
}

impl OomWatch {
    /// Reads the counter of the memory cgroup `pid` is in (`memory.events` with cgroup v2,
    /// `memory.oom_control` with v1; without either only the kernel log can tell).
    pub fn start(pid: u32) -> OomWatch {
        let events = oom_counter_file(pid);
        let oom_kills_at_start = events.as_deref().and_then(read_oom_kills);
        OomWatch {
            pid,
            events,
            oom_kills_at_start,
            since_us: monotonic_us().saturating_sub(START_SLACK_US),
        }
    }

    /// After the worker died of SIGKILL: what the kernel says about memory, or `None` when it
    /// says nothing.
    pub fn evidence(&self) -> Option<String> {
        if kernel_log_names_oom_kill(self.pid, self.since_us) {
            return Some(format!(
                "the kernel log says its OOM killer killed pid {}: out of memory",
                self.pid
            ));
        }
        let (path, before) = (self.events.as_deref()?, self.oom_kills_at_start?);
        let after = read_oom_kills(path)?;
        (after > before).then(|| {
            format!(
                "oom_kill in {} went from {before} to {after} while it ran: out of memory",
                path.display()
            )
        })
    }
}

/// The file with the `oom_kill` counter of the memory cgroup of `pid`, read from
/// `/proc/<pid>/cgroup`: `0::/a/b` (v2) or `4:memory:/a/b` (v1).
fn oom_counter_file(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let root = Path::new("/sys/fs/cgroup");
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let path = path.trim_start_matches('/');
            if controllers.is_empty() {
                Some(root.join(path).join("memory.events"))
            } else if controllers.split(',').any(|c| c == "memory") {
                Some(root.join("memory").join(path).join("memory.oom_control"))
            } else {
                None
            }
        })
        .find(|file| file.is_file())
}

fn read_oom_kills(path: &Path) -> Option<u64> {
    parse_oom_kills(&std::fs::read_to_string(path).ok()?)
}

/// The `oom_kill` line of a `memory.events` file.
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "oom_kill").then(|| value.trim().parse().ok())?
    })
}

/// Whether a kernel log record (`/dev/kmsg` format: `prio,seq,usecs,flags;message`) says the
/// OOM killer killed `pid` at or after `since_us` on the kernel log's clock.
pub fn record_names_oom_kill(record: &str, pid: u32, since_us: u64) -> bool {
    let Some((header, message)) = record.split_once(';') else {
        return false;
    };
    let Some(stamp) = header
        .split(',')
        .nth(2)
        .and_then(|usecs| usecs.parse::<u64>().ok())
    else {
        return false;
    };
    stamp >= since_us && message.contains(&format!("Killed process {pid} ("))
}

/// Reads the kernel's log buffer (`/dev/kmsg`, readable by root) without blocking and looks
/// for an OOM kill of `pid` since `since_us`.
fn kernel_log_names_oom_kill(pid: u32, since_us: u64) -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut kmsg) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return false;
    };
    let mut record = vec![0u8; 8192];
    // Each read returns one record; stop at the end of the buffer (EAGAIN) or on anything
    // else than a record lost to wraparound (EPIPE), and never read forever.
    for _ in 0..100_000 {
        match kmsg.read(&mut record) {
            Ok(0) => return false,
            Ok(n) => {
                if record_names_oom_kill(&String::from_utf8_lossy(&record[..n]), pid, since_us) {
                    return true;
                }
            }
            Err(err) if err.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(_) => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_named_with_their_number() {
        assert_eq!(signal_name(libc::SIGKILL), "SIGKILL (9)");
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV (11)");
        assert_eq!(signal_name(63), "signal 63");
    }

    #[test]
    fn oom_kill_counter_is_read_from_memory_events() {
        let text = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(text), Some(2));
        // cgroup v1's memory.oom_control.
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n";
        assert_eq!(parse_oom_kills(v1), Some(5));
        assert_eq!(parse_oom_kills("low 0\nhigh 4\n"), None);
        assert_eq!(parse_oom_kills("oom_kill x\n"), None);
    }

    #[test]
    fn only_a_record_naming_the_pid_counts() {
        let record = "3,1234,5678,-;Memory cgroup out of memory: Killed process 4321 (reelspool) \
                      total-vm:100kB, anon-rss:50kB";
        assert!(record_names_oom_kill(record, 4321, 0));
        assert!(!record_names_oom_kill(record, 432, 0));
        assert!(!record_names_oom_kill(record, 43210, 0));
    }

    #[test]
    fn a_record_from_before_the_worker_started_is_about_another_process() {
        // Pids are reused: the same pid killed at 5.678 ms says nothing about a worker that
        // started at 10 s.
        let record = "3,1234,5678,-;Out of memory: Killed process 4321 (python3)";
        assert!(record_names_oom_kill(record, 4321, 5_678));
        assert!(!record_names_oom_kill(record, 4321, 5_679));
        assert!(!record_names_oom_kill(record, 4321, 10_000_000));
        // Without a readable time stamp a record proves nothing.
        assert!(!record_names_oom_kill(
            "3,1234,x,-;Killed process 4321 (a)",
            4321,
            0
        ));
        assert!(!record_names_oom_kill("Killed process 4321 (a)", 4321, 0));
    }

    #[test]
    fn the_watch_clock_is_the_kernel_log_clock() {
        // Every record in the kernel log was stamped before now on the watch's clock, and the
        // newest one not long before it on a machine that logs at all. (Writing a record of our
        // own to /dev/kmsg is not possible in every container, so the test reads what is there.)
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let Ok(mut reader) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
        else {
            eprintln!("SKIPPED: /dev/kmsg is not readable here (needs root)");
            return;
        };
        let mut record = vec![0u8; 8192];
        let mut newest = None;
        for _ in 0..1_000_000 {
            match reader.read(&mut record) {
                Ok(n) if n > 0 => {
                    let text = String::from_utf8_lossy(&record[..n]).into_owned();
                    if let Some(stamp) = text
                        .split(',')
                        .nth(2)
                        .and_then(|usecs| usecs.parse::<u64>().ok())
                    {
                        newest = Some(stamp);
                    }
                }
                Err(err) if err.raw_os_error() == Some(libc::EPIPE) => continue,
                _ => break,
            }
        }
        let now = monotonic_us();
        let Some(newest) = newest else {
            eprintln!("SKIPPED: the kernel log is empty");
            return;
        };
        assert!(
            newest <= now,
            "kernel log record at {newest} us, clock now {now} us"
        );
        // A wall-clock stamp would be decades of microseconds; a boot-relative one is not.
        assert!(
            now < 10 * 365 * 24 * 3_600 * 1_000_000,
            "{now} us is no boot-relative clock"
        );
        let record = format!("6,1,{newest},-;Killed process 7 (x)");
        assert!(record_names_oom_kill(&record, 7, newest));
        assert!(!record_names_oom_kill(&record, 7, now + 1));
    }

    #[test]
    fn a_live_process_has_no_oom_evidence() {
        let watch = OomWatch::start(std::process::id());
        assert_eq!(watch.evidence(), None);
    }
}
