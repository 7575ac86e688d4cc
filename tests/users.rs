//! End to end with real people: users and groups are created for each test (`useradd`,
//! `groupadd`), job files are dropped and CLI commands run as them (`setpriv`), and the daemon
//! (running as root, the service user of these tests) must give each one only what their own
//! uid and groups allow. Needs root; skipped with a note otherwise.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{reelspool_bin, wait_for, Farm};

/// The users and the submit group of one test, removed again when dropped.
struct People {
    group: String,
    alice: String,
    bob: String,
    /// Not a member of the submit group.
    mallory: String,
}

impl People {
    /// `None` (with the reason printed) where users cannot be created.
    fn create() -> Option<People> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: creating users needs root (CI runs as root)");
            return None;
        }
        for tool in ["useradd", "groupadd", "setpriv"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|out| out.status.success());
            if !found {
                eprintln!("skipped: `{tool}` is not installed");
                return None;
            }
        }
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "{}{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let people = People {
            group: format!("rsg{tag}"),
            alice: format!("rsa{tag}"),
            bob: format!("rsb{tag}"),
            mallory: format!("rsm{tag}"),
        };
        run_ok("groupadd", &[&people.group]);
        for member in [&people.alice, &people.bob] {
            run_ok(
                "useradd",
                &["-M", "-U", "-s", "/bin/sh", "-G", &people.group, member],
            );
        }
        run_ok("useradd", &["-M", "-U", "-s", "/bin/sh", &people.mallory]);
        Some(people)
    }
}

impl Drop for People {
    fn drop(&mut self) {
        for user in [&self.alice, &self.bob, &self.mallory] {
            let _ = Command::new("userdel").arg(user).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

/// Runs an admin command; `useradd` and friends refuse while another one holds the lock on
/// /etc/passwd (tests run in parallel), so a lock refusal is waited out.
fn run_ok(program: &str, args: &[&str]) {
    let mut last = String::new();
    let done = wait_for_opt(Duration::from_secs(30), || {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
        if out.status.success() {
            return Some(true);
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        (!last.contains("lock")).then_some(false)
    });
    assert!(done == Some(true), "{program} {args:?} failed: {last}");
}

/// Like `wait_for`, but `None` at the deadline instead of a panic.
fn wait_for_opt<T>(timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return Some(value);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(path: &Path, owner: &str) {
    run_ok("chown", &[owner, &path.display().to_string()]);
}

/// Runs `program args` as `user` with their groups.
fn as_user(user: &str, program: &Path, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid", user, "--regid", user, "--init-groups", "--"])
        .arg(program)
        .args(args)
        .env_remove("REELSPOOL_CONFIG")
        .output()
        .expect("run setpriv")
}

/// A `reelspool` command as `user` against the farm's config.
fn cli_as(farm: &Farm, user: &str, args: &[&str]) -> Output {
    let config = farm.config.display().to_string();
    let mut all = vec!["--config", config.as_str()];
    all.extend_from_slice(args);
    as_user(user, &user_binary(farm), &all)
}

/// A copy of the `reelspool` binary the test's users can run: the build tree may lie under a
/// directory only root can enter (a CI checkout under /root, say).
fn user_binary(farm: &Farm) -> PathBuf {
    let copy = farm.root.path().join("reelspool");
    if !copy.exists() {
        let partial = farm.root.path().join("reelspool.partial");
        std::fs::copy(reelspool_bin(), &partial).expect("copy the binary");
        chmod(&partial, 0o755);
        std::fs::rename(&partial, &copy).expect("put the binary in place");
    }
    copy
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A farm the test's users can reach: its directories are opened the way the packaged
/// tmpfiles.d opens them to members (here wider: anyone may drop a file, so that the daemon's
/// own check of the submit group is what refuses an outsider).
fn shared_farm(people: &People, extra: &str) -> Farm {
    let farm = Farm::new(&format!("submit_group: {}\n{extra}", people.group));
    chmod(farm.root.path(), 0o755);
    for dir in ["tmp", "incoming"] {
        std::fs::create_dir_all(farm.spool.join(dir)).expect("spool dir");
        chmod(&farm.spool.join(dir), 0o1777);
    }
    chmod(&farm.spool, 0o755);
    for file in ["portrait.png", "hello.wav"] {
        chmod(&farm.media.join(file), 0o644);
    }
    chown(&farm.out, &format!("root:{}", people.group));
    chmod(&farm.out, 0o2770);
    farm
}

/// Writes a job file where everyone may read it, for `user` to submit.
fn job_file(farm: &Farm, name: &str, text: &str) -> String {
    let path = farm.root.path().join(format!("{name}.yaml"));
    std::fs::write(&path, text).expect("write job file");
    chmod(&path, 0o644);
    path.display().to_string()
}

/// Drops a job file into incoming/ as `user` (written in place, as `cp` does).
fn drop_as(farm: &Farm, user: &str, name: &str, content: &str) {
    let source = job_file(farm, name, content);
    let target = farm.incoming().join(format!("{name}.yaml"));
    let out = as_user(
        user,
        Path::new("/bin/cp"),
        &[&source, &target.display().to_string()],
    );
    assert!(out.status.success(), "cp as {user}: {}", text(&out));
}

/// Whether `path` carries a POSIX access ACL.
fn jobs_acl_present(path: &str) -> bool {
    let c_path = std::ffi::CString::new(path).expect("path");
    let name = std::ffi::CString::new("system.posix_acl_access").expect("name");
    // SAFETY: a size query: NUL-terminated names, no buffer.
    let len = unsafe { libc::getxattr(c_path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    len > 0
}

/// Starts the daemon and waits for its control socket, which members' commands go through.
fn start(farm: &Farm) -> common::Daemon {
    let daemon = farm.start_daemon();
    let socket = farm.spool.join("control.sock");
    wait_for("the control socket", Duration::from_secs(30), || {
        socket.exists().then_some(())
    });
    daemon
}

fn wait_rejection(farm: &Farm, file: &str) -> String {
    wait_for(
        &format!("{file} to be rejected"),
        Duration::from_secs(30),
        || farm.rejection(file),
    )
}

fn wait_job(farm: &Farm, file: &str) -> serde_json::Value {
    wait_for(
        &format!("{file} to become a job"),
        Duration::from_secs(30),
        || {
            if let Some(error) = farm.rejection(file) {
                panic!("{file} was rejected:\n{error}");
            }
            farm.job_by_source(file)
        },
    )
}

#[test]
fn jobs_act_with_their_owners_rights() {
    let Some(people) = People::create() else {
        return;
    };
    let farm = shared_farm(&people, "hold_queue: true\n");
    // Bob's private copies of the media: readable by him (and the service), not by Alice.
    let private = farm.media.join("bob");
    std::fs::create_dir(&private).expect("bob's media dir");
    for file in ["portrait.png", "hello.wav"] {
        std::fs::copy(farm.media.join(file), private.join(file)).expect("copy media");
        chown(&private.join(file), &people.bob);
        chmod(&private.join(file), 0o600);
    }
    let _daemon = start(&farm);

    // Bob submits a job with his own private media: accepted, and owned by him.
    let bob_text = farm.job_yaml("bobs", "").replace(
        &format!("{}/", farm.media.display()),
        &format!("{}/", private.display()),
    );
    let bob_file = job_file(&farm, "bobs-job", &bob_text);
    let out = cli_as(&farm, &people.bob, &["submit", &bob_file]);
    assert!(out.status.success(), "bob's submit: {}", text(&out));
    let bob_job = wait_job(&farm, "bobs-job.yaml");
    assert_eq!(bob_job["owner"]["name"], people.bob.as_str(), "{bob_job}");
    let bob_id = bob_job["id"].as_str().expect("job id").to_string();

    // Alice names Bob's private portrait: refused, naming the file and the right she lacks.
    let alice_text = farm.job_yaml("alices", "").replace(
        &format!("{}/portrait.png", farm.media.display()),
        &format!("{}/portrait.png", private.display()),
    );
    drop_as(&farm, &people.alice, "alice-steals", &alice_text);
    let refusal = wait_rejection(&farm, "alice-steals.yaml");
    assert!(
        refusal.contains(&format!("{}/portrait.png", private.display())),
        "{refusal}"
    );
    assert!(refusal.contains("read (r)"), "{refusal}");
    assert!(refusal.contains(&people.alice), "{refusal}");

    // An output directory Alice may not write into is refused the same way.
    let inside_closed = farm.out.join("closed");
    std::fs::create_dir(&inside_closed).expect("closed output dir");
    chmod(&inside_closed, 0o755);
    let elsewhere = farm.job_yaml("elsewhere", "").replace(
        &format!("{}/elsewhere.mp4", farm.out.display()),
        &format!("{}/elsewhere.mp4", inside_closed.display()),
    );
    drop_as(&farm, &people.alice, "alice-closed", &elsewhere);
    let refusal = wait_rejection(&farm, "alice-closed.yaml");
    assert!(refusal.contains("write (w)"), "{refusal}");
    assert!(
        refusal.contains(&inside_closed.display().to_string()),
        "{refusal}"
    );

    // Alice's own job, with media she may read, is accepted as hers.
    drop_as(
        &farm,
        &people.alice,
        "alice-own",
        &farm.job_yaml("alices", ""),
    );
    let alice_job = wait_job(&farm, "alice-own.yaml");
    assert_eq!(alice_job["owner"]["name"], people.alice.as_str());

    // Mallory is not in the submit group: refused with the group named.
    drop_as(
        &farm,
        &people.mallory,
        "mallory",
        &farm.job_yaml("mallorys", ""),
    );
    let refusal = wait_rejection(&farm, "mallory.yaml");
    assert!(refusal.contains(&people.mallory), "{refusal}");
    assert!(refusal.contains(&people.group), "{refusal}");
    assert!(
        farm.job_by_source("mallory.yaml").is_none(),
        "an outsider's job must not exist"
    );
    // ... and the daemon does not answer Mallory either.
    let out = cli_as(&farm, &people.mallory, &["status"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&people.group),
        "{}",
        text(&out)
    );

    // Job directories are closed to members: the worker log cannot be read directly.
    let bob_dir = farm.jobs_dir().join(&bob_id);
    let log = bob_dir.join("worker.log");
    std::fs::write(&log, "bob's worker said this\n").expect("seed worker log");
    let out = as_user(
        &people.alice,
        Path::new("/bin/cat"),
        &[&log.display().to_string()],
    );
    assert!(!out.status.success(), "cat as alice: {}", text(&out));
    // Nor through the daemon: refused with the path and the right.
    let out = cli_as(&farm, &people.alice, &["logs", &bob_id]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("may not read"), "{}", text(&out));
    assert!(
        stderr.contains(&log.display().to_string()),
        "{}",
        text(&out)
    );
    // Bob reads his own log through the daemon.
    let out = cli_as(&farm, &people.bob, &["logs", &bob_id]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "bob's worker said this\n"
    );

    // Alice's list shows Bob's job by name and state, but details only of her own.
    let out = cli_as(&farm, &people.alice, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    let bobs = listed
        .iter()
        .find(|job| job["id"] == bob_id.as_str())
        .expect("bob's job is listed");
    assert_eq!(bobs["name"], "bobs");
    assert_eq!(bobs["phase"], "queued");
    assert!(bobs["output"].is_null(), "{bobs}");
    assert_eq!(bobs["source_file"], "", "{bobs}");
    let alices = listed
        .iter()
        .find(|job| job["id"] == alice_job["id"])
        .expect("alice's job is listed");
    assert!(alices["output"].is_string(), "{alices}");
    // Her filters work through the daemon as they do for root.
    let listed_as = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = cli_as(&farm, &people.alice, args);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    };
    assert!(listed.len() >= 2, "{listed:?}");
    let queued = listed_as(&["status", "--json", "--state", "queued"]);
    assert!(
        queued.iter().all(|job| job["phase"] == "queued"),
        "{queued:?}"
    );
    assert!(queued.iter().any(|job| job["id"] == bob_id.as_str()));
    assert_eq!(listed_as(&["status", "--json", "--limit", "1"]).len(), 1);
    let out = cli_as(&farm, &people.alice, &["status", &bob_id]);
    assert!(!out.status.success(), "{}", text(&out));
    let out = cli_as(
        &farm,
        &people.alice,
        &["status", alice_job["id"].as_str().expect("id")],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("owner:     {}", people.alice)),
        "{}",
        text(&out)
    );

    // Alice cannot change the priority of Bob's job; Bob can, through the daemon.
    let out = cli_as(&farm, &people.alice, &["priority", &bob_id, "500"]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("may not change the priority of"),
        "{}",
        text(&out)
    );
    let out = cli_as(&farm, &people.bob, &["priority", &bob_id, "9"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("priority 9"),
        "{}",
        text(&out)
    );
    let changed = farm.job_by_source("bobs-job.yaml").expect("bob's job");
    assert_eq!(changed["priority"], 9, "only bob's change applies");

    // Alice cannot cancel Bob's job; Bob can.
    let out = cli_as(
        &farm,
        &people.alice,
        &["cancel", &bob_id, "--wait-secs", "5"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("may not cancel"), "{}", text(&out));
    assert!(stderr.contains(&people.bob), "{}", text(&out));
    let still = farm.job_by_source("bobs-job.yaml").expect("bob's job");
    assert_eq!(
        still["phase"], "queued",
        "alice's cancel must change nothing"
    );
    let out = cli_as(
        &farm,
        &people.bob,
        &["cancel", &bob_id, "--wait-secs", "30"],
    );
    assert!(out.status.success(), "{}", text(&out));
    wait_for("bob's job to be cancelled", Duration::from_secs(30), || {
        farm.job_by_source("bobs-job.yaml")
            .filter(|job| job["phase"] == "cancelled")
    });
}

#[test]
fn the_finished_video_is_readable_by_its_owner_only() {
    let Some(people) = People::create() else {
        return;
    };
    let farm = shared_farm(
        &people,
        "gpu_pool: { kind: cpu, slots: 1, failure_drain_threshold: 1000 }\n",
    );
    let _daemon = start(&farm);
    drop_as(&farm, &people.alice, "alice", &farm.job_yaml("alices", ""));
    let job = wait_for("alice's job to finish", Duration::from_secs(120), || {
        if let Some(error) = farm.rejection("alice.yaml") {
            panic!("rejected:\n{error}");
        }
        farm.job_by_source("alice.yaml")
            .filter(|job| matches!(job["phase"].as_str(), Some("done" | "failed" | "cancelled")))
    });
    assert_eq!(job["phase"], "done", "{job}\n{}", farm.daemon_logs());
    let video = farm.out.join("alices.mp4").display().to_string();
    let head = Path::new("/usr/bin/head");
    let out = as_user(&people.alice, head, &["-c", "8", &video]);
    assert!(
        out.status.success(),
        "alice reads her video: {}",
        text(&out)
    );
    assert_eq!(out.stdout.len(), 8);
    let mode = std::fs::metadata(&video)
        .expect("video")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o640, "{video}");
    // Bob is in the output directory's group but the ACL gives that group nothing.
    let acl = jobs_acl_present(&video);
    let out = as_user(&people.bob, head, &["-c", "8", &video]);
    if acl {
        assert!(!out.status.success(), "bob may not: {}", text(&out));
    } else {
        eprintln!("note: no ACLs on this file system; the 0640 fallback lets the group read");
    }
    let out = as_user(&people.mallory, head, &["-c", "8", &video]);
    assert!(!out.status.success(), "mallory may not: {}", text(&out));
}

#[test]
fn the_worker_checks_the_inputs_again_before_opening_them() {
    let Some(people) = People::create() else {
        return;
    };
    let farm = shared_farm(
        &people,
        "gpu_pool: { kind: cpu, slots: 1, failure_drain_threshold: 1000 }\n",
    );
    let config = std::fs::read_to_string(&farm.config).expect("config");
    std::fs::write(&farm.config, format!("{config}hold_queue: true\n")).expect("held config");
    let daemon = start(&farm);
    drop_as(&farm, &people.alice, "later", &farm.job_yaml("later", ""));
    let job = wait_job(&farm, "later.yaml");
    assert_eq!(job["phase"], "queued");
    // Alice may read the speech at intake; then it is taken from her before the job runs.
    let audio = farm.media.join("hello.wav");
    chmod(&audio, 0o600);
    std::fs::write(&farm.config, format!("{config}hold_queue: false\n")).expect("open config");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.pid(), libc::SIGHUP) };
    let job = wait_for("the job to end", Duration::from_secs(120), || {
        farm.job_by_source("later.yaml")
            .filter(|job| matches!(job["phase"].as_str(), Some("done" | "failed" | "cancelled")))
    });
    assert_eq!(job["phase"], "failed", "{job}\n{}", farm.daemon_logs());
    let error = job["error"].as_str().expect("a failed job says why");
    assert!(error.contains(&audio.display().to_string()), "{error}");
    assert!(error.contains("read (r)"), "{error}");
    assert!(
        !farm.out.join("later.mp4").exists(),
        "nothing may be rendered"
    );
}

/// Runs a shell line as `user` and insists it worked.
fn sh_as(user: &str, line: &str) {
    let out = as_user(user, Path::new("/bin/sh"), &["-c", line]);
    assert!(out.status.success(), "`{line}` as {user}: {}", text(&out));
}

/// The names in `dir`, sorted (what a test put there, and nothing else).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// One swap of issue 25: a job whose `path` gets the folder or file `swapped` renamed away
/// and replaced by a symlink to `target` (outside every root, or another member's private
/// folder).
struct Swap {
    job: &'static str,
    swapped: PathBuf,
    target: PathBuf,
}

impl Swap {
    /// Done by the job's owner, as a member would.
    fn apply(&self, user: &str) {
        let away = self.swapped.with_extension("away");
        sh_as(
            user,
            &format!(
                "mv '{}' '{}' && ln -s '{}' '{}'",
                self.swapped.display(),
                away.display(),
                self.target.display(),
                self.swapped.display()
            ),
        );
    }
}

#[test]
fn files_swapped_for_symlinks_after_intake_fail_the_job_and_nothing_leaks() {
    let Some(people) = People::create() else {
        return;
    };
    let farm = shared_farm(
        &people,
        "gpu_pool: { kind: cpu, slots: 1, failure_drain_threshold: 1000 }\n",
    );
    let config = std::fs::read_to_string(&farm.config).expect("config");
    std::fs::write(&farm.config, format!("{config}hold_queue: true\n")).expect("held config");
    // Outside every root, open to all; and Bob's private folders, in each root.
    let outside = farm.root.path().join("outside");
    std::fs::create_dir(&outside).expect("outside");
    chmod(&outside, 0o777);
    std::fs::copy(farm.media.join("hello.wav"), outside.join("hello.wav")).expect("copy");
    let bob_media = farm.media.join("bob-private");
    let bob_out = farm.out.join("bob-private");
    for dir in [&bob_media, &bob_out] {
        std::fs::create_dir_all(dir.join("sub")).expect("bob's folder");
        chown(dir, &format!("{}:{}", people.bob, people.bob));
        chmod(dir, 0o700);
    }
    std::fs::copy(
        farm.media.join("portrait.png"),
        bob_media.join("portrait.png"),
    )
    .expect("copy");
    chown(&bob_media.join("portrait.png"), &people.bob);
    chmod(&bob_media.join("portrait.png"), 0o600);
    let before = |dir: &Path| listing(dir);
    let (outside_before, bob_media_before, bob_out_before) =
        (before(&outside), before(&bob_media), before(&bob_out));
    // Alice's folders, one per job: `media/alice/<job>/` and `out/<job>/sub/`.
    let alice_media = farm.media.join("alice");
    std::fs::create_dir(&alice_media).expect("alice media");
    chown(&alice_media, &people.alice);
    let jobs = [
        "out-dir-early",
        "out-parent-early",
        "in-file-early",
        "in-parent-early",
        "out-dir-late",
        "out-parent-late",
        "in-file-late",
        "in-parent-late",
    ];
    for job in jobs {
        let media = alice_media.join(job);
        std::fs::create_dir(&media).expect("media folder");
        for file in ["portrait.png", "hello.wav"] {
            std::fs::copy(farm.media.join(file), media.join(file)).expect("copy");
        }
        std::fs::create_dir_all(farm.out.join(job).join("sub")).expect("out folder");
        run_ok(
            "chown",
            &[
                "-R",
                &people.alice,
                &media.display().to_string(),
                &farm.out.join(job).display().to_string(),
            ],
        );
    }
    let swap = |job: &'static str| -> Swap {
        let (media, out) = (alice_media.join(job), farm.out.join(job));
        let kind = job.rsplit_once('-').map_or(job, |(kind, _)| kind);
        let (swapped, target) = match kind {
            "out-dir" => (out.join("sub"), outside.clone()),
            "out-parent" => (out.clone(), bob_out.clone()),
            "in-file" => (media.join("portrait.png"), bob_media.join("portrait.png")),
            _ => (media.clone(), outside.clone()),
        };
        Swap {
            job,
            swapped,
            target,
        }
    };
    let job_text = |job: &str| {
        farm.job_yaml(job, "  num_clip: 1\n")
            .replace(
                &format!("{}/", farm.media.display()),
                &format!("{}/", alice_media.join(job).display()),
            )
            .replace(
                &format!("{}/{job}.mp4", farm.out.display()),
                &format!("{}/sub/video.mp4", farm.out.join(job).display()),
            )
    };
    // Workers stop after clip 0's segment until the test lets them go on.
    let daemon = farm.start_daemon_with_env(&[("REELSPOOL_TEST_PAUSE_AT", "after_segment@0")]);
    let socket = farm.spool.join("control.sock");
    wait_for("the control socket", Duration::from_secs(30), || {
        socket.exists().then_some(())
    });

    // A truncated image is refused at intake, with the reason.
    let cut = alice_media.join("cut.png");
    let png = std::fs::read(farm.media.join("portrait.png")).expect("png");
    std::fs::write(&cut, &png[..png.len() / 2]).expect("cut png");
    chown(&cut, &people.alice);
    let cut_text = farm.job_yaml("cut", "").replace(
        &format!("{}/portrait.png", farm.media.display()),
        &cut.display().to_string(),
    );
    drop_as(&farm, &people.alice, "cut", &cut_text);
    let refusal = wait_rejection(&farm, "cut.yaml");
    assert!(refusal.contains(&cut.display().to_string()), "{refusal}");
    assert!(refusal.contains("truncated"), "{refusal}");

    let ends = |file: &str| {
        wait_for(&format!("{file} to end"), Duration::from_secs(120), || {
            farm.job_by_source(file).filter(|job| {
                matches!(job["phase"].as_str(), Some("done" | "failed" | "cancelled"))
            })
        })
    };
    let check_failed = |swap: &Swap, job: &serde_json::Value| {
        assert_eq!(
            job["phase"],
            "failed",
            "{}: {job}\n{}",
            swap.job,
            farm.daemon_logs()
        );
        let error = job["error"].as_str().expect("a failed job says why");
        assert!(
            error.contains(&swap.swapped.display().to_string()),
            "{}: the path that changed is named: {error}",
            swap.job
        );
        assert!(error.contains("symbolic link"), "{}: {error}", swap.job);
    };

    // Between intake and start: the queue is held while the files change.
    for job in &jobs[..4] {
        drop_as(&farm, &people.alice, job, &job_text(job));
        assert_eq!(wait_job(&farm, &format!("{job}.yaml"))["phase"], "queued");
        swap(job).apply(&people.alice);
    }
    std::fs::write(&farm.config, format!("{config}hold_queue: false\n")).expect("open config");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.pid(), libc::SIGHUP) };
    for job in &jobs[..4] {
        let state = ends(&format!("{job}.yaml"));
        check_failed(&swap(job), &state);
        assert!(
            !farm
                .jobs_dir()
                .join(state["id"].as_str().expect("id"))
                .join("work/paused-after_segment@0")
                .exists(),
            "{job} must fail before rendering"
        );
    }

    // During the render: each job is held after its first clip while its files change.
    for job in &jobs[4..] {
        drop_as(&farm, &people.alice, job, &job_text(job));
        let state = wait_job(&farm, &format!("{job}.yaml"));
        let work = farm
            .jobs_dir()
            .join(state["id"].as_str().expect("id"))
            .join("work");
        wait_for(
            &format!("{job} to pause mid-render"),
            Duration::from_secs(120),
            || work.join("paused-after_segment@0").exists().then_some(()),
        );
        let swap = swap(job);
        swap.apply(&people.alice);
        std::fs::write(work.join("resume-after_segment@0"), b"").expect("resume");
        check_failed(&swap, &ends(&format!("{job}.yaml")));
    }

    // Nothing was read into a video or written outside, or into Bob's folders.
    assert_eq!(listing(&outside), outside_before, "nothing written outside");
    assert_eq!(listing(&bob_media), bob_media_before);
    assert_eq!(listing(&bob_out), bob_out_before);
    assert!(
        listing(&bob_out.join("sub")).is_empty(),
        "nothing in bob's folder"
    );
    for job in jobs {
        for dir in [
            farm.out.join(job),
            farm.out.join(job).join("sub.away"),
            farm.out.join(format!("{job}.away")).join("sub"),
        ] {
            if let Ok(names) = std::fs::read_dir(&dir) {
                for name in names.flatten() {
                    assert!(
                        !name.file_name().to_string_lossy().ends_with(".mp4"),
                        "{job}: no video anywhere: {}",
                        name.path().display()
                    );
                }
            }
        }
    }
    let mut daemon = daemon;
    assert!(daemon.is_running(), "the daemon is alive");
}
