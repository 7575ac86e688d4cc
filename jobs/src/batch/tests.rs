use super::*;
use crate::Roots;
use std::fs;

struct Fixture {
    _dir: tempfile::TempDir,
    inputs: PathBuf,
    outputs: PathBuf,
    roots: Roots,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = dir.path().canonicalize().expect("resolve temp dir");
    let inputs = base.join("in");
    let outputs = base.join("out");
    for d in [&inputs, &outputs] {
        fs::create_dir(d).expect("mkdir");
    }
    for name in ["a.png", "a.wav", "b.png", "b.wav"] {
        fs::write(inputs.join(name), b"x").expect("write input");
    }
    let roots = Roots {
        inputs: vec![inputs.clone()],
        outputs: vec![outputs.clone()],
    };
    Fixture {
        _dir: dir,
        inputs,
        outputs,
        roots,
    }
}

fn parse(fx: &Fixture, text: &str) -> Result<BatchSpec, JobFileError> {
    let ctx = ParseContext {
        templates_dir: None,
        roots: &fx.roots,
    };
    parse_batch("/spool/week.yaml", text, "week", &ctx)
}

#[test]
fn inline_items_become_one_job_each_with_the_shared_keys() {
    let fx = fixture();
    let (i, o) = (fx.inputs.display(), fx.outputs.display());
    let text = format!(
        "render:\n  seed: 7\nbatch:\n  items:\n    - {{ image: {i}/a.png, audio: {i}/a.wav, prompt: one, output: {o}/1.mp4 }}\n    - {{ image: {i}/b.png, audio: {i}/b.wav, prompt: two, output: {o}/2.mp4 }}\npriority: 3\n"
    );
    assert!(is_batch(&text));
    let batch = parse(&fx, &text).expect("valid batch");
    assert_eq!(batch.name, "week");
    assert_eq!(batch.rows.len(), 2);
    assert_eq!(batch.rows[1].name, "week-002");
    assert_eq!(batch.rows[1].inputs.prompt, "two");
    assert_eq!(batch.rows[1].output.path, fx.outputs.join("2.mp4"));
    assert!(batch
        .rows
        .iter()
        .all(|r| r.render.seed == 7 && r.priority == 3));
}

#[test]
fn a_bad_csv_cell_is_reported_at_its_row_and_column() {
    let fx = fixture();
    let (i, o) = (fx.inputs.display(), fx.outputs.display());
    let csv = fx.inputs.join("rows.csv");
    fs::write(
        &csv,
        format!(
            "image,audio,prompt,output\n{i}/a.png,{i}/a.wav,\"hello, world\",{o}/1.mp4\n{i}/a.png,{i}/missing.wav,x,{o}/2.mp4\n"
        ),
    )
    .expect("write csv");
    let text = format!("batch:\n  csv: {}\n", csv.display());
    let err = parse(&fx, &text).expect_err("row 2 names a missing file");
    let d = &err.diagnostics()[0];
    assert_eq!(d.file, csv.display().to_string());
    assert_eq!(d.line, 3);
    assert!(d.column > 1, "points at the audio cell: {d:?}");
    assert!(
        d.message.starts_with("row 2, column `audio`"),
        "{}",
        d.message
    );
    assert_eq!(err.diagnostics().len(), 1, "{err}");
}

#[test]
fn a_csv_batch_keeps_quoted_prompts() {
    let fx = fixture();
    let (i, o) = (fx.inputs.display(), fx.outputs.display());
    let csv = fx.inputs.join("rows.csv");
    fs::write(
        &csv,
        format!("output,prompt,image,audio\r\n{o}/1.mp4,\"say \"\"hi\"\", then go\",{i}/a.png,{i}/a.wav\r\n"),
    )
    .expect("write csv");
    let batch = parse(
        &fx,
        &format!("name: course\nbatch:\n  csv: {}\n", csv.display()),
    )
    .expect("valid batch");
    assert_eq!(batch.rows.len(), 1);
    assert_eq!(batch.rows[0].inputs.prompt, "say \"hi\", then go");
    assert_eq!(batch.rows[0].name, "course-001");
    assert_eq!(batch.csv.as_deref(), Some(csv.as_path()));
}

#[test]
fn shared_keys_are_checked_at_their_own_lines() {
    let fx = fixture();
    let text = "batch:\n  items: []\nrender:\n  infer_frames: 0\n";
    let err = parse(&fx, text).expect_err("infer_frames out of range");
    assert_eq!(err.diagnostics()[0].line, 4, "{err}");
}

#[test]
fn a_batch_may_not_give_inputs_or_an_output_path_of_its_own() {
    let fx = fixture();
    let text = "batch:\n  items: []\ninputs:\n  prompt: x\n";
    let err = parse(&fx, text).expect_err("inputs in a batch");
    assert!(err.to_string().contains("rows of `batch:`"), "{err}");
}

#[test]
fn two_rows_writing_one_file_are_refused() {
    let fx = fixture();
    let (i, o) = (fx.inputs.display(), fx.outputs.display());
    let row = format!("{{ image: {i}/a.png, audio: {i}/a.wav, prompt: p, output: {o}/same.mp4 }}");
    let text = format!("batch:\n  items:\n    - {row}\n    - {row}\n");
    let err = parse(&fx, &text).expect_err("same output twice");
    assert!(
        err.to_string().contains("row 2, column `output`") && err.to_string().contains("row 1"),
        "{err}"
    );
}
