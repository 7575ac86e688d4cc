//! File hygiene: syntax, documents, encoding, size, alias bombs.

use super::*;

#[test]
fn rejects_tab_indentation_with_hint() {
    let fx = fixture();
    let text = format!("{}render:\n\tseed: 1\n", base(&fx));
    let d = rejected(&fx, &text).remove(0);
    assert_eq!(d.line, 8);
    assert!(
        d.hint.as_deref().unwrap_or_default().contains("tabs"),
        "{d}"
    );
}

#[test]
fn rejects_multiple_documents() {
    let fx = fixture();
    let text = format!("---\n{}---\nname: second\n", base(&fx));
    let d = rejected(&fx, &text).remove(0);
    assert_eq!(d.line, 8);
    assert!(d.message.contains("several"), "{}", d.message);
}

#[test]
fn rejects_non_mapping_top_level() {
    let fx = fixture();
    let d = rejected(&fx, "- inputs\n- output\n").remove(0);
    assert!(d.message.contains("must be a mapping"), "{}", d.message);
    let d = rejected(&fx, "just some words\n").remove(0);
    assert!(d.message.contains("must be a mapping"), "{}", d.message);
}

#[test]
fn rejects_empty_and_comment_only_files() {
    let fx = fixture();
    assert!(rejected(&fx, "  \n\n").remove(0).message.contains("empty"));
    assert!(rejected(&fx, "# nothing yet\n")
        .remove(0)
        .message
        .contains("no keys"));
}

#[test]
fn rejects_alias_bomb() {
    let fx = fixture();
    let mut text = base(&fx);
    text.push_str("render:\n  size: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    let keys = [
        "num_clip",
        "infer_frames",
        "sample_steps",
        "guide_scale",
        "seed",
        "fps",
    ];
    let mut previous = "a".to_string();
    for (i, key) in keys.iter().enumerate() {
        let name = format!("l{i}");
        let refs = vec![format!("*{previous}"); 9].join(", ");
        text.push_str(&format!("  {key}: &{name} [{refs}]\n"));
        previous = name;
    }
    let d = rejected(&fx, &text).remove(0);
    assert!(d.message.contains("anchors and aliases"), "{}", d.message);
}

#[test]
fn rejects_oversize_file() {
    let fx = fixture();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("huge.yaml");
    let mut text = base(&fx);
    text.push_str(&"# padding\n".repeat(110_000));
    fs::write(&path, &text).expect("write");
    let ctx = ParseContext {
        templates_dir: None,
        roots: &fx.roots,
    };
    let err = load_job_file(&path, &ctx).expect_err("over 1 MiB");
    let d = only(err.diagnostics());
    assert!(
        d.message.contains("more than the 1048576-byte limit"),
        "{d}"
    );
    assert_eq!(d.file, path.display().to_string());
    let err = parse_job("mem.yaml", &text, "mem", &ctx).expect_err("same limit in memory");
    assert!(err.report().contains("1048576-byte limit"), "{err}");
}

#[test]
fn rejects_non_utf8_with_position() {
    let fx = fixture();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("latin1.yaml");
    let mut bytes = base(&fx).into_bytes();
    bytes.extend_from_slice(b"name: caf\xe9\n");
    fs::write(&path, bytes).expect("write");
    let ctx = ParseContext {
        templates_dir: None,
        roots: &fx.roots,
    };
    let err = load_job_file(&path, &ctx).expect_err("not UTF-8");
    let d = only(err.diagnostics());
    assert_eq!((d.line, d.column), (7, 10));
    assert!(err.report().contains(":7:10"), "{err}");
}

#[test]
fn load_job_file_names_job_after_file_stem() {
    let fx = fixture();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("interview-7.yaml");
    fs::write(&path, base(&fx)).expect("write");
    let ctx = ParseContext {
        templates_dir: None,
        roots: &fx.roots,
    };
    let spec = load_job_file(&path, &ctx).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.name, "interview-7");
}

#[test]
fn load_job_file_reports_missing_file_with_path() {
    let fx = fixture();
    let ctx = ParseContext {
        templates_dir: None,
        roots: &fx.roots,
    };
    let missing = fx.elsewhere.join("gone.yaml");
    match load_job_file(&missing, &ctx) {
        Err(JobsError::ReadJobFile { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected ReadJobFile, got {other:?}"),
    }
}
