use super::*;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_write_replaces_the_file_and_leaves_no_temporary_behind() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().join("state.json");
    write_atomic(&path, b"old").expect("first write");
    write_atomic(&path, b"new").expect("second write");
    assert_eq!(std::fs::read(&path).expect("read"), b"new");
    assert_eq!(names(tmp.path()), vec!["state.json"]);
}

#[test]
fn the_temporary_file_is_a_dot_file_beside_the_target_until_the_rename() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = Dir::open(tmp.path()).expect("open");
    let seen = dir
        .replace(OsStr::new("carry-3.safetensors"))
        .write_with(|file| {
            file.write_all(b"abc")?;
            // Read back through the same handle, as a checkpoint hashes what it wrote.
            file.seek(SeekFrom::Start(0))?;
            let mut back = String::new();
            file.read_to_string(&mut back)?;
            Ok((names(tmp.path()), back))
        })
        .expect("write");
    let (during, back) = seen;
    assert_eq!(back, "abc");
    assert_eq!(during.len(), 1, "{during:?}");
    assert!(during[0].starts_with(".carry-3.safetensors."), "{during:?}");
    assert!(is_temp_name(&during[0]), "{during:?}");
    assert_eq!(names(tmp.path()), vec!["carry-3.safetensors"]);
}

#[test]
fn a_failed_write_keeps_the_old_file_and_removes_its_temporary() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = tmp.path().join("checkpoint.json");
    write_atomic(&path, b"old").expect("first write");
    let dir = Dir::open(tmp.path()).expect("open");
    let err = dir
        .replace(OsStr::new("checkpoint.json"))
        .write_with(|file| {
            file.write_all(b"half")?;
            Err::<(), _>(io::Error::other("disk on fire"))
        })
        .expect_err("the writer failed");
    assert_eq!(err.to_string(), "disk on fire");
    assert_eq!(std::fs::read(&path).expect("read"), b"old");
    assert_eq!(names(tmp.path()), vec!["checkpoint.json"]);
}

#[test]
fn a_write_into_a_missing_directory_fails() {
    let tmp = tempfile::tempdir().expect("temp dir");
    assert!(write_atomic(&tmp.path().join("nope/state.json"), b"x").is_err());
}

#[test]
fn a_staged_write_keeps_its_temporary_out_of_the_target_directory() {
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(tmp.path().join("pending")).expect("mkdir");
    std::fs::create_dir(tmp.path().join("tmp")).expect("mkdir");
    let pending = Dir::open(tmp.path().join("pending")).expect("open");
    let staging = Dir::open(tmp.path().join("tmp")).expect("open");
    pending
        .replace(OsStr::new("record.json"))
        .staged_in(&staging)
        .mode(0o600)
        .without_dir_sync()
        .write_with(|file| {
            file.write_all(b"{}")?;
            assert_eq!(names(&tmp.path().join("pending")), Vec::<String>::new());
            assert_eq!(names(&tmp.path().join("tmp")).len(), 1);
            Ok(())
        })
        .expect("write");
    pending.sync().expect("sync");
    let record = tmp.path().join("pending/record.json");
    assert_eq!(std::fs::read(&record).expect("read"), b"{}");
    let mode = std::fs::metadata(&record)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(names(&tmp.path().join("tmp")).is_empty());
}

#[test]
fn names_that_leave_the_directory_are_refused() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = Dir::open(tmp.path()).expect("open");
    for bad in ["", ".", "..", "a/b", "../escape"] {
        let err = dir.write(bad, b"x").expect_err(bad);
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}: {err}");
    }
    assert!(names(tmp.path()).is_empty());
}

#[test]
fn a_directory_descriptor_from_elsewhere_writes_the_same_way() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let opened = File::open(tmp.path()).expect("open the directory");
    let dir = Dir::from_fd(OwnedFd::from(opened), "the test's directory");
    dir.write("lease.json", b"{}").expect("write");
    assert_eq!(
        std::fs::read(tmp.path().join("lease.json")).expect("read"),
        b"{}"
    );
    assert_eq!(dir.path(), Path::new("the test's directory"));
}

#[test]
fn rename_no_replace_refuses_an_existing_target() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::write(&a, b"a").expect("write");
    std::fs::write(&b, b"b").expect("write");
    let err = rename_no_replace(&a, &b).expect_err("b exists");
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    std::fs::remove_file(&b).expect("remove");
    rename_no_replace(&a, &b).expect("b is free");
    assert_eq!(std::fs::read(&b).expect("read"), b"a");
    assert!(!a.exists());
}

#[test]
fn publish_moves_a_finished_file_over_its_target() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (partial, target) = (tmp.path().join(".3.mkv.partial"), tmp.path().join("3.mkv"));
    std::fs::write(&partial, b"12345").expect("write");
    std::fs::write(&target, b"old").expect("write");
    let meta = publish(&partial, &target).expect("publish");
    assert_eq!(meta.len(), 5);
    assert_eq!(std::fs::read(&target).expect("read"), b"12345");
    assert!(!partial.exists());
    let elsewhere = tmp.path().join("sub/3.mkv");
    assert!(publish(&target, &elsewhere).is_err(), "not one directory");
}

#[test]
fn temp_names_are_told_from_files() {
    assert!(is_temp_name(".state.json.12-0.tmp"));
    assert!(!is_temp_name("state.json"));
    assert!(!is_temp_name("job.yaml.tmp"));
}

#[test]
fn a_walk_beneath_a_root_refuses_a_symlink_on_the_way_and_names_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(root.join("a/b")).expect("dirs");
    std::fs::create_dir(&outside).expect("outside");
    let dir = open_dir_beneath(&root, Path::new("a/b"), false, |_| Ok(())).expect("walk");
    assert_eq!(dir.path(), root.join("a/b"));
    dir.write("x", b"1").expect("write through the descriptor");
    // `a` is swapped for a link to a folder outside the root.
    std::fs::rename(root.join("a"), root.join("a-moved")).expect("move away");
    std::os::unix::fs::symlink(&outside, root.join("a")).expect("link");
    std::fs::create_dir(outside.join("b")).expect("b outside");
    for fallback in [false, true] {
        if fallback {
            beneath::force_fallback_walk();
        }
        let err = open_dir_beneath(&root, Path::new("a/b"), true, |_| Ok(()))
            .expect_err("the link is refused");
        let text = err.to_string();
        assert!(
            text.contains(&root.join("a").display().to_string()),
            "{text}"
        );
        assert!(text.contains("symbolic link"), "{text}");
        assert!(text.contains(&outside.display().to_string()), "{text}");
    }
    assert!(
        names(&outside.join("b")).is_empty(),
        "nothing written outside"
    );
    // `..` is refused before anything is opened; a missing folder is made by a create walk.
    assert!(open_dir_beneath(&root, Path::new("../outside"), false, |_| Ok(())).is_err());
    let made = open_dir_beneath(&root, Path::new("a-moved/new/deeper"), true, |_| Ok(()))
        .expect("create walk");
    made.write("y", b"2").expect("write");
    assert_eq!(names(&root.join("a-moved/new/deeper")), vec!["y"]);
}

#[test]
fn a_file_opened_beneath_a_root_must_be_a_regular_file_reached_without_links() {
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::write(tmp.path().join("real.wav"), b"riff").expect("file");
    std::os::unix::fs::symlink(tmp.path().join("real.wav"), tmp.path().join("link.wav"))
        .expect("link");
    let dir = open_dir_beneath(tmp.path(), Path::new(""), false, |_| Ok(())).expect("root");
    let mut text = String::new();
    open_file_in(&dir, OsStr::new("real.wav"))
        .expect("regular file")
        .read_to_string(&mut text)
        .expect("read");
    assert_eq!(text, "riff");
    let err = open_file_in(&dir, OsStr::new("link.wav")).expect_err("a link is refused");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    let err = open_file_in(&dir, OsStr::new("missing.wav")).expect_err("missing");
    assert!(err.to_string().contains("does not exist"), "{err}");
}
