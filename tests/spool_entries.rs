//! End to end: whatever lands in `spool/incoming/` gets an answer. Entries that are not
//! regular files (symlinks, FIFOs, sockets, directories, device nodes) are moved to
//! `rejected/` as they are, never opened nor followed, with an `.error` saying what they are.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{wait_for, Farm};

const HOLD: &str = "hold_queue: true\ngpu_pool: { kind: cpu, slots: 1 }\n";
const WAIT: Duration = Duration::from_secs(30);

/// One odd entry: its name in incoming/, the words its `.error` must use, and a check of the
/// type of what ends up in rejected/.
struct Odd {
    name: &'static str,
    words: &'static str,
    is_kind: fn(&std::fs::FileType) -> bool,
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// A character device node like /dev/null (root only; CI runs as root).
fn mknod_null(path: &Path) -> bool {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: as above; the device numbers are those of /dev/null.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 3)) };
    rc == 0
}

/// Creates every kind of odd entry in incoming/ (a socket is kept open by the returned
/// listener) and says which were made. The symlink points at a valid job file outside the
/// spool, which must stay where it is, untouched.
fn make_odd_entries(
    farm: &Farm,
    prefix: &str,
) -> (Vec<Odd>, std::os::unix::net::UnixListener, PathBuf) {
    let incoming = farm.incoming();
    let target = farm.root.path().join(format!("{prefix}-target.yaml"));
    std::fs::write(&target, farm.job_yaml(&format!("{prefix}-target"), "")).expect("target");
    let mut odd = Vec::new();
    let name = |kind: &str| -> &'static str {
        Box::leak(format!("{prefix}-{kind}.yaml").into_boxed_str())
    };

    let link = name("link");
    std::os::unix::fs::symlink(&target, incoming.join(link)).expect("symlink");
    odd.push(Odd {
        name: link,
        words: "is a symbolic link",
        is_kind: |t| t.is_symlink(),
    });

    let fifo = name("fifo");
    mkfifo(&incoming.join(fifo));
    odd.push(Odd {
        name: fifo,
        words: "is a named pipe (FIFO)",
        is_kind: |t| t.is_fifo(),
    });

    let dir = name("dir");
    std::fs::create_dir(incoming.join(dir)).expect("dir");
    std::fs::write(incoming.join(dir).join("inside.yaml"), "name: inside\n").expect("inside");
    odd.push(Odd {
        name: dir,
        words: "is a directory",
        is_kind: |t| t.is_dir(),
    });

    let sock = name("sock");
    let listener = std::os::unix::net::UnixListener::bind(incoming.join(sock)).expect("socket");
    odd.push(Odd {
        name: sock,
        words: "is a socket",
        is_kind: |t| t.is_socket(),
    });

    let dev = name("dev");
    if mknod_null(&incoming.join(dev)) {
        odd.push(Odd {
            name: dev,
            words: "is a character device",
            is_kind: |t| t.is_char_device(),
        });
    } else {
        eprintln!("not root: no device node in this run");
    }
    (odd, listener, target)
}

fn assert_answered(farm: &Farm, odd: &[Odd], target: &Path) {
    let rejected = farm.spool.join("rejected");
    for entry in odd {
        // The `.error` is written just before the entry is renamed beside it (so a crash
        // cannot leave an entry without one): wait for both.
        let (error, moved) = wait_for(&format!("{} to be rejected", entry.name), WAIT, || {
            let error = farm.rejection(entry.name)?;
            let moved = std::fs::symlink_metadata(rejected.join(entry.name)).ok()?;
            Some((error, moved))
        });
        assert!(error.contains(entry.words), "{}: {error}", entry.name);
        assert!(
            error.contains("= help:"),
            "{}: says what to do: {error}",
            entry.name
        );
        assert!(
            (entry.is_kind)(&moved.file_type()),
            "{}: moved as itself",
            entry.name
        );
        assert!(
            std::fs::symlink_metadata(farm.incoming().join(entry.name)).is_err(),
            "{} still in incoming/",
            entry.name
        );
    }
    // The link moved, not its target, and the target was not read as a job.
    let link = odd
        .iter()
        .find(|e| e.name.ends_with("-link.yaml"))
        .expect("link");
    assert_eq!(
        std::fs::read_link(rejected.join(link.name)).expect("still a link"),
        target
    );
    assert!(target.is_file(), "the link's target must stay where it was");
    assert!(
        farm.job_by_source(link.name).is_none(),
        "a link must not become a job"
    );
    let dir = odd
        .iter()
        .find(|e| e.name.ends_with("-dir.yaml"))
        .expect("dir");
    assert!(
        rejected.join(dir.name).join("inside.yaml").is_file(),
        "a directory moves whole"
    );
}

/// Writes a valid job file whose name is not UTF-8 (`<prefix>-\xff.yaml`) straight into
/// incoming/, and says the readable name it must get in rejected/.
fn drop_non_utf8_name(farm: &Farm, prefix: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut raw = format!("{prefix}-").into_bytes();
    raw.push(0xff);
    raw.extend_from_slice(b".yaml");
    let name = std::ffi::OsStr::from_bytes(&raw);
    std::fs::write(farm.incoming().join(name), farm.job_yaml(prefix, "")).expect("write");
    format!("{prefix}-\\xff.yaml")
}

fn assert_non_utf8_answered(farm: &Farm, readable: &str) {
    let error = wait_for(&format!("{readable} to be rejected"), WAIT, || {
        let error = farm.rejection(readable)?;
        farm.spool
            .join("rejected")
            .join(readable)
            .is_file()
            .then_some(error)
    });
    assert!(error.contains("not valid UTF-8"), "{error}");
    assert!(error.contains("= help:"), "{error}");
    let left: Vec<_> = std::fs::read_dir(farm.incoming())
        .expect("incoming")
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(left.is_empty(), "left in incoming/: {left:?}");
}

#[test]
fn odd_entries_dropped_while_running_are_moved_aside_with_a_reason() {
    let farm = Farm::new(HOLD);
    let _daemon = farm.start_daemon();
    let (odd, _listener, target) = make_odd_entries(&farm, "live");
    let readable = drop_non_utf8_name(&farm, "live");
    assert_answered(&farm, &odd, &target);
    assert_non_utf8_answered(&farm, &readable);
    // Nothing blocked on the FIFO: intake still takes a good job.
    farm.drop_job("after.yaml", &farm.job_yaml("after", ""));
    wait_for("a good job after the odd ones", WAIT, || {
        farm.job_by_source("after.yaml")
    });
}

#[test]
fn odd_entries_found_at_start_are_moved_aside_with_a_reason() {
    let farm = Farm::new(HOLD);
    let mut daemon = farm.start_daemon();
    assert!(daemon.terminate(WAIT).success());
    let (odd, _listener, target) = make_odd_entries(&farm, "boot");
    let readable = drop_non_utf8_name(&farm, "boot");
    farm.drop_job("good.yaml", &farm.job_yaml("good", ""));
    let _daemon = farm.start_daemon();
    assert_answered(&farm, &odd, &target);
    assert_non_utf8_answered(&farm, &readable);
    wait_for("the good job beside them", WAIT, || {
        farm.job_by_source("good.yaml")
    });
}
