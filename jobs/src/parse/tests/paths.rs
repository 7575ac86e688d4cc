//! Inputs and outputs against the allowed roots.

use super::*;

#[test]
fn rejects_relative_path_with_hint() {
    let fx = fixture();
    let text = base(&fx).replace(&fx.image.display().to_string(), "portraits/anna.png");
    let d = rejected(&fx, &text).remove(0);
    assert_eq!((d.line, d.column), (2, 10));
    assert_eq!(
        d.hint.as_deref(),
        Some("the file moves once accepted; write an absolute path")
    );
}

#[test]
fn rejects_missing_input_file() {
    let fx = fixture();
    let text = base(&fx).replace("anna.wav", "bob.wav");
    let d = rejected(&fx, &text).remove(0);
    assert_eq!(d.line, 3);
    assert!(d.message.contains("does not exist"), "{}", d.message);
}

#[test]
fn rejects_path_outside_roots_after_symlink() {
    let fx = fixture();
    let secret = fx.elsewhere.join("secret.png");
    fs::write(&secret, b"secret").expect("write");
    let link = fx.inputs.join("innocent.png");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    let text = base(&fx).replace(&fx.image.display().to_string(), &link.display().to_string());
    let d = rejected(&fx, &text).remove(0);
    assert_eq!(d.line, 2);
    assert!(
        d.message.contains("outside the allowed input roots"),
        "{}",
        d.message
    );
    assert!(
        d.message.contains(&secret.display().to_string()),
        "shows where it leads: {}",
        d.message
    );
}

#[test]
fn rejects_dotdot_escape() {
    let fx = fixture();
    let secret = fx.elsewhere.join("secret.wav");
    fs::write(&secret, b"secret").expect("write");
    let sneaky = fx.inputs.join("../elsewhere/secret.wav");
    let text = base(&fx).replace(
        &fx.audio.display().to_string(),
        &sneaky.display().to_string(),
    );
    let d = rejected(&fx, &text).remove(0);
    assert_eq!(d.line, 3);
    assert!(
        d.message.contains("outside the allowed input roots"),
        "{}",
        d.message
    );
}

#[test]
fn rejects_output_escaping_through_missing_folder() {
    let fx = fixture();
    let sneaky = fx.outputs.join("new/../../elsewhere/v.mp4");
    let text = base(&fx).replace(
        &fx.outputs.join("v.mp4").display().to_string(),
        &sneaky.display().to_string(),
    );
    let d = rejected(&fx, &text).remove(0);
    assert_eq!(d.line, 6);
    assert!(d.message.contains("`..`"), "{}", d.message);
}

#[test]
fn rejects_output_that_is_a_directory() {
    let fx = fixture();
    let text = base(&fx).replace(
        &fx.outputs.join("v.mp4").display().to_string(),
        &fx.outputs.display().to_string(),
    );
    let d = rejected(&fx, &text).remove(0);
    assert_eq!(d.line, 6);
    assert!(d.message.contains("folder"), "{}", d.message);
}

#[test]
fn reports_all_path_errors_at_once() {
    let fx = fixture();
    let text = base(&fx)
        .replace("anna.png", "nobody.png")
        .replace("anna.wav", "nobody.wav")
        .replace(
            &fx.outputs.display().to_string(),
            &fx.elsewhere.display().to_string(),
        );
    let lines: Vec<usize> = rejected(&fx, &text).iter().map(|d| d.line).collect();
    assert_eq!(lines, vec![2, 3, 6]);
}

#[test]
fn rejects_output_overwriting_an_input() {
    let mut fx = fixture();
    fx.roots.outputs.push(fx.inputs.clone());
    let text = base(&fx).replace(
        &fx.outputs.join("v.mp4").display().to_string(),
        &fx.audio.display().to_string(),
    );
    let d = rejected(&fx, &text).remove(0);
    assert_eq!(d.line, 6);
    assert!(
        d.message.contains("is one of the job's inputs"),
        "{}",
        d.message
    );
}
