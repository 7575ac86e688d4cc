use super::*;
use std::os::unix::fs::PermissionsExt;

fn alice() -> Person {
    Person {
        uid: 1001,
        name: "alice".into(),
        gids: vec![1001, 500],
    }
}

fn entry(tag: AclTag, perm: u32, id: u32) -> AclEntry {
    AclEntry { tag, perm, id }
}

#[test]
fn owner_bits_decide_for_the_owner_even_when_others_may_more() {
    // 0077: everybody but the owner may read.
    assert!(!allows(&alice(), 1001, 0, 0o077, None, Right::Read));
    assert!(allows(&alice(), 1001, 0, 0o400, None, Right::Read));
}

#[test]
fn group_bits_apply_to_members_and_other_bits_to_the_rest() {
    assert!(allows(&alice(), 7, 500, 0o640, None, Right::Read));
    assert!(!allows(&alice(), 7, 500, 0o640, None, Right::Write));
    assert!(!allows(&alice(), 7, 600, 0o640, None, Right::Read));
    assert!(allows(&alice(), 7, 600, 0o644, None, Right::Read));
    // A member of the file's group gets the group bits, not the more generous other bits.
    assert!(!allows(&alice(), 7, 500, 0o604, None, Right::Read));
}

#[test]
fn named_user_entry_is_limited_by_the_mask() {
    let acl = [
        entry(AclTag::UserObj, 6, ACL_UNDEFINED_ID),
        entry(AclTag::User, 6, 1001),
        entry(AclTag::GroupObj, 0, ACL_UNDEFINED_ID),
        entry(AclTag::Mask, 4, ACL_UNDEFINED_ID),
        entry(AclTag::Other, 0, ACL_UNDEFINED_ID),
    ];
    assert!(allows(&alice(), 7, 600, 0o640, Some(&acl), Right::Read));
    assert!(!allows(&alice(), 7, 600, 0o640, Some(&acl), Right::Write));
}

#[test]
fn named_group_entry_grants_and_a_matching_group_without_the_right_denies() {
    let acl = [
        entry(AclTag::UserObj, 6, ACL_UNDEFINED_ID),
        entry(AclTag::GroupObj, 0, ACL_UNDEFINED_ID),
        entry(AclTag::Group, 4, 500),
        entry(AclTag::Mask, 4, ACL_UNDEFINED_ID),
        entry(AclTag::Other, 4, ACL_UNDEFINED_ID),
    ];
    assert!(allows(&alice(), 7, 600, 0o640, Some(&acl), Right::Read));
    // In the file's group (entry ---): other's r-- does not apply.
    let denying = [
        entry(AclTag::UserObj, 6, ACL_UNDEFINED_ID),
        entry(AclTag::GroupObj, 0, ACL_UNDEFINED_ID),
        entry(AclTag::Mask, 4, ACL_UNDEFINED_ID),
        entry(AclTag::Other, 4, ACL_UNDEFINED_ID),
    ];
    assert!(!allows(
        &alice(),
        7,
        500,
        0o604,
        Some(&denying),
        Right::Read
    ));
    assert!(allows(&alice(), 7, 600, 0o604, Some(&denying), Right::Read));
}

#[test]
fn acl_bytes_round_trip_in_kernel_order() {
    let entries = [
        entry(AclTag::Other, 0, ACL_UNDEFINED_ID),
        entry(AclTag::User, 4, 1001),
        entry(AclTag::UserObj, 6, ACL_UNDEFINED_ID),
    ];
    let bytes = encode_acl(&entries);
    assert_eq!(bytes.len(), 4 + 3 * 8);
    assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
    let back = parse_acl(&bytes).expect("own encoding parses");
    assert_eq!(back[0].tag, AclTag::UserObj);
    assert_eq!(back[1], entry(AclTag::User, 4, 1001));
    assert_eq!(back[2].tag, AclTag::Other);
}

#[test]
fn malformed_acl_bytes_are_errors() {
    assert!(parse_acl(&[2, 0, 0]).is_err());
    assert!(parse_acl(&[3, 0, 0, 0]).is_err());
    assert!(parse_acl(&[2, 0, 0, 0, 0x40, 0, 4, 0, 0, 0, 0, 0]).is_err());
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_closed_directory_on_the_way_denies_search_with_its_path() {
    let root = tempfile::tempdir().expect("temp dir");
    chmod(root.path(), 0o755);
    let private = root.path().join("private");
    std::fs::create_dir(&private).expect("mkdir");
    let file = private.join("portrait.png");
    std::fs::write(&file, b"png").expect("write");
    chmod(&file, 0o644);
    chmod(&private, 0o700);
    // Alice owns neither; the files belong to whoever runs the test.
    let err = check_read(&alice(), &file).expect_err("the directory is closed to her");
    let text = err.to_string();
    assert!(text.contains("search (x)"), "{text}");
    assert!(
        text.contains(&*private.canonicalize().expect("real").to_string_lossy()),
        "{text}"
    );
    chmod(&private, 0o711);
    check_read(&alice(), &file).expect("x on the directory is enough");
    chmod(&file, 0o600);
    let err = check_read(&alice(), &file).expect_err("the file itself is private");
    assert!(err.to_string().contains("read (r)"), "{err}");
    let root_person = Person {
        uid: 0,
        name: "root".into(),
        gids: vec![0],
    };
    check_read(&root_person, &file).expect("root reads everything");
}

#[test]
fn writing_needs_write_on_the_nearest_existing_directory() {
    let root = tempfile::tempdir().expect("temp dir");
    chmod(root.path(), 0o755);
    let target = root.path().join("new/sub/video.mp4");
    let err = check_write(&alice(), &target).expect_err("0755 is not writable by her");
    assert!(err.to_string().contains("write (w)"), "{err}");
    chmod(root.path(), 0o777);
    check_write(&alice(), &target).expect("a world-writable directory is");
}

#[test]
fn leave_readable_by_grants_the_owner_read_and_nobody_else() {
    let root = tempfile::tempdir().expect("temp dir");
    let file = root.path().join("video.mp4");
    std::fs::write(&file, b"mp4").expect("write");
    let owner = alice();
    leave_readable_by(&file, &owner).expect("grant");
    let meta = std::fs::metadata(&file).expect("stat");
    let acl = read_acl(&file).expect("read acl");
    // Bob is even in the file's group.
    let stranger = Person {
        uid: 1002,
        name: "bob".into(),
        gids: vec![1002, meta.gid()],
    };
    assert_eq!(meta.mode() & 0o777, 0o640);
    match acl {
        Some(acl) => {
            assert!(allows(
                &owner,
                meta.uid(),
                meta.gid(),
                meta.mode(),
                Some(&acl),
                Right::Read
            ));
            assert!(!allows(
                &owner,
                meta.uid(),
                meta.gid(),
                meta.mode(),
                Some(&acl),
                Right::Write
            ));
            assert!(!allows(
                &stranger,
                meta.uid(),
                meta.gid(),
                meta.mode(),
                Some(&acl),
                Right::Read
            ));
        }
        // A file system without ACLs: the documented fallback, 0640 alone.
        None => eprintln!("note: this file system keeps no ACLs"),
    }
}

proptest::proptest! {
    #[test]
    fn any_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
        let _ = parse_acl(&bytes);
    }

    #[test]
    fn encoded_entries_parse_back(perms in proptest::collection::vec((0u32..8, 0u32..70000), 0..10)) {
        let entries: Vec<AclEntry> = perms
            .iter()
            .map(|&(perm, id)| entry(AclTag::User, perm, id))
            .collect();
        let back = parse_acl(&encode_acl(&entries)).expect("own encoding parses");
        let mut expected = entries.clone();
        expected.sort_by_key(|entry| entry.id);
        let back_ids: Vec<(u32, u32)> = back.iter().map(|e| (e.perm, e.id)).collect();
        let expected_ids: Vec<(u32, u32)> = expected.iter().map(|e| (e.perm, e.id)).collect();
        proptest::prop_assert_eq!(back_ids, expected_ids);
    }
}
