//! Templates merged underneath jobs.

use super::*;

#[test]
fn template_merges_underneath() {
    let fx = fixture();
    let text = format!(
        "template: lowmem-24g\n{}render:\n  infer_frames: 48\n",
        base(&fx)
    );
    let spec = parse(&fx, &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.render.size, Size::new(384, 256), "from the template");
    assert_eq!(spec.render.sample_steps, 3, "from the template");
    assert_eq!(spec.render.infer_frames, 48, "the job wins");
    assert_eq!(spec.render.seed, 42, "neither sets it: default");
}

#[test]
fn standard_template_sets_full_size() {
    let fx = fixture();
    let spec = parse(&fx, &format!("template: standard-80g\n{}", base(&fx)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spec.render.size, Size::new(704, 384));
    assert_eq!(
        (spec.render.infer_frames, spec.render.sample_steps),
        (48, 4)
    );
}

#[test]
fn rejects_unknown_template_listing_available() {
    let fx = fixture();
    let d = rejected(&fx, &format!("template: lowmem-42g\n{}", base(&fx))).remove(0);
    assert_eq!((d.line, d.column), (1, 11));
    assert_eq!(d.message, "unknown template `lowmem-42g`");
    let hint = d.hint.as_deref().unwrap_or_default();
    assert!(
        hint.contains("lowmem-24g") && hint.contains("standard-80g"),
        "{hint}"
    );
}

#[test]
fn template_errors_name_the_template_file() {
    let fx = fixture();
    let templates = tempfile::tempdir().expect("temp dir");
    let file = templates.path().join("broken.yaml");
    fs::write(&file, "render:\n  infer_frames: 999\n  sise: 64*64\n").expect("write");
    fs::write(templates.path().join("named.yaml"), "name: x\n").expect("write");
    let ctx = ParseContext {
        templates_dir: Some(templates.path()),
        roots: &fx.roots,
    };
    let err = parse_job(
        "job.yaml",
        &format!("template: broken\n{}", base(&fx)),
        "j",
        &ctx,
    )
    .expect_err("template has an unknown key");
    let d = only(err.diagnostics());
    assert_eq!(d.file, file.display().to_string());
    assert_eq!(d.line, 3);
    let err = parse_job(
        "job.yaml",
        &format!("template: named\n{}", base(&fx)),
        "j",
        &ctx,
    )
    .expect_err("templates cannot set name");
    assert!(err.report().contains("unknown key `name`"), "{err}");
    fs::write(&file, "render:\n  infer_frames: 999\n").expect("write");
    let err = parse_job(
        "job.yaml",
        &format!("template: broken\n{}", base(&fx)),
        "j",
        &ctx,
    )
    .expect_err("template value out of range");
    let d = only(err.diagnostics());
    assert_eq!(
        (d.file.as_str(), d.line, d.column),
        (file.display().to_string().as_str(), 2, 17)
    );
}

#[test]
fn rejects_template_when_none_configured() {
    let fx = fixture();
    let ctx = ParseContext {
        templates_dir: None,
        roots: &fx.roots,
    };
    let err = parse_job(
        "job.yaml",
        &format!("template: lowmem-24g\n{}", base(&fx)),
        "j",
        &ctx,
    )
    .expect_err("no templates folder");
    assert!(err.report().contains("no templates folder"), "{err}");
}
