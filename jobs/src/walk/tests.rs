use super::*;
use crate::file::{JOB_KEYS, TEMPLATE_KEYS};

fn check(text: &str) -> Vec<Diagnostic> {
    let src = Source {
        name: "j.yaml",
        text,
    };
    check_structure(&src, JOB_KEYS, "job file")
}

#[test]
fn clean_file_has_no_problems() {
    assert!(
        check("name: a\nrender: {size: 64*64}\nnotify:\n  webhook:\n    - url: x\n").is_empty()
    );
}

#[test]
fn unknown_key_inside_list_item_is_found() {
    let d = check("notify:\n  webhook:\n    - url: x\n      secret: y\n");
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].line, d[0].column), (4, 7));
    assert!(
        d[0].message.contains("in `notify.webhook[0]`"),
        "{}",
        d[0].message
    );
    assert!(d[0]
        .hint
        .as_deref()
        .unwrap_or_default()
        .contains("`secret_env`"));
}

#[test]
fn every_duplicate_is_reported_at_its_second_use() {
    let d = check("name: a\nname: b\nrender:\n  seed: 1\n  seed: 2\n");
    let at: Vec<(usize, &str)> = d.iter().map(|d| (d.line, d.message.as_str())).collect();
    assert_eq!(
        at,
        vec![
            (2, "key `name` appears twice"),
            (5, "key `render.seed` appears twice")
        ]
    );
}

#[test]
fn unknown_key_far_from_any_valid_one_lists_them_without_guess() {
    let d = check("zzzzzzzz: 1\n");
    let hint = d[0].hint.as_deref().unwrap_or_default();
    assert!(hint.starts_with("valid keys here: `name`"), "{hint}");
}

#[test]
fn stops_after_max_reported() {
    let text: String = (0..MAX_REPORTED + 5)
        .map(|i| format!("unknown{i}: 1\n"))
        .collect();
    assert_eq!(check(&text).len(), MAX_REPORTED);
}

#[test]
fn trivial_alias_is_accepted() {
    assert!(check("name: &n job-1\ntemplate: *n\n").is_empty());
}

#[test]
fn self_multiplying_aliases_are_refused() {
    let text = "render:\n  size: &a [x, x, x, x, x, x, x, x]\n  seed: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n  fps: [*b, *b, *b, *b, *b, *b, *b, *b]\n";
    let d = check(text);
    assert_eq!(d.len(), 1);
    assert!(
        d[0].message.contains("anchors and aliases"),
        "{}",
        d[0].message
    );
}

#[test]
fn tags_are_refused() {
    let d = check("render: !custom {seed: 1}\n");
    assert!(d[0].message.contains("YAML tags"), "{}", d[0].message);
}

#[test]
fn template_keys_exclude_name_and_template() {
    let src = Source {
        name: "t.yaml",
        text: "template: other\n",
    };
    let d = check_structure(&src, TEMPLATE_KEYS, "template");
    assert!(
        d[0].message.contains("at the top of the template"),
        "{}",
        d[0].message
    );
}

#[test]
fn second_document_marker_is_found_after_content() {
    assert_eq!(
        second_document_line("---\n# c\na: 1\n--- \nb: 2\n"),
        Some(4)
    );
    assert_eq!(second_document_line("---\na: 1\n"), None);
    assert_eq!(second_document_line("a: '---'\n----\n"), None);
}
