use super::*;
use crate::testkit::sample_summary;
use crate::NoticeKind;

fn parse(text: &str) -> Result<Template, NoticeError> {
    Template::parse(Path::new("test.txt"), text)
}

fn render(text: &str, summary: &JobSummary, escape: Escape) -> String {
    parse(text)
        .expect("test template parses")
        .render(&NoticeFields::new(summary, "d-1"), escape)
}

#[test]
fn builtin_templates_parse() {
    NoticeTemplates::load(None).expect("the shipped templates must parse");
}

#[test]
fn substitutes_fields_by_name() {
    let summary = sample_summary("job-7", NoticeKind::Done);
    let text = render(
        "{{job_name}}/{{ job_id }}/{{event}}/{{delivery_id}}",
        &summary,
        Escape::Plain,
    );
    assert_eq!(text, "interview-042/job-7/done/d-1");
}

#[test]
fn section_shows_only_when_the_field_is_set() {
    let mut summary = sample_summary("job-7", NoticeKind::Failed);
    let template = "[{{#error}}E={{error}}{{/error}}{{^error}}no error{{/error}}]";
    summary.error = Some("CUDA out of memory".into());
    assert_eq!(
        render(template, &summary, Escape::Plain),
        "[E=CUDA out of memory]"
    );
    summary.error = None;
    assert_eq!(render(template, &summary, Escape::Plain), "[no error]");
}

#[test]
fn standalone_section_tags_leave_no_blank_lines() {
    let mut summary = sample_summary("job-7", NoticeKind::Done);
    summary.gpu = None;
    summary.error = Some("boom".into());
    let template =
        "a\n{{#gpu}}\nGPU {{gpu}}\n{{/gpu}}\n  {{#error}}\nerr {{error}}\n{{/error}}\nz\n";
    assert_eq!(
        render(template, &summary, Escape::Plain),
        "a\nerr boom\nz\n"
    );
}

#[test]
fn html_alternative_escapes_values() {
    let mut summary = sample_summary("job-7", NoticeKind::Failed);
    summary.error = Some("<script>alert('x')</script> & \"more\"".into());
    let html = render("<pre>{{error}}</pre>", &summary, Escape::Html);
    assert_eq!(
        html,
        "<pre>&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;more&quot;</pre>"
    );
}

#[test]
fn slack_text_escapes_its_control_characters() {
    let mut summary = sample_summary("job-7", NoticeKind::Failed);
    summary.error = Some("<!channel> a & b".into());
    assert_eq!(
        render("{{error}}", &summary, Escape::Slack),
        "&lt;!channel&gt; a &amp; b"
    );
}

#[test]
fn control_and_bidi_characters_of_every_field_are_escaped_in_every_format() {
    let mut summary = sample_summary("job-7", NoticeKind::Failed);
    summary.name = "n\u{1b}[2J".into();
    summary.output = Some("/out/a\u{202e}4pm.exe\r\n.mp4".into());
    summary.error = Some("bad\u{0}\u{7f}\u{9b}31m".into());
    summary.log_tail = vec!["one\u{1b}]0;t\u{7}".into(), "two\u{2066}".into()];
    let all = "{{job_name}}|{{output}}|{{error}}|{{log_tail}}";
    for escape in [Escape::Plain, Escape::Html, Escape::Slack] {
        let text = render(all, &summary, escape);
        assert!(
            !text.chars().any(|c| c != '\n' && jobs::needs_escape(c)),
            "{escape:?}: {text:?}"
        );
        assert!(
            text.contains("n\\x1b[2J|/out/a\\u{202e}4pm.exe\\r\\n.mp4|bad\\0\\x7f\\u{009b}31m|"),
            "{text}"
        );
        // The log tail keeps its line breaks, one line per line.
        assert!(
            text.ends_with("one\\x1b]0;t\\x07\ntwo\\u{2066}"),
            "{text:?}"
        );
    }
}

#[test]
fn unknown_placeholder_is_reported_with_its_line() {
    let err = parse("line one\n{{job_nmae}}").expect_err("a typo must be caught");
    let text = err.to_string();
    assert!(text.contains("test.txt:2"), "{text}");
    assert!(text.contains("job_nmae"), "{text}");
}

#[test]
fn unclosed_section_is_reported_where_it_opens() {
    let err = parse("a\nb\n{{#error}}\nc").expect_err("the section is never closed");
    assert!(err.to_string().contains("test.txt:3"), "{err}");
}

#[test]
fn section_closed_by_another_name_is_refused() {
    let err = parse("{{#error}}x{{/gpu}}").expect_err("mismatched close");
    assert!(err.to_string().contains("opened on line 1"), "{err}");
}

#[test]
fn unterminated_tag_is_refused() {
    assert!(parse("hello {{job_name").is_err());
}

#[test]
fn subject_is_a_single_line_whatever_the_values() {
    let mut summary = sample_summary("job-7", NoticeKind::Done);
    summary.name = "evil\r\nBcc: victim@example.com".into();
    let email = NoticeTemplates::builtin().render_email(&NoticeFields::new(&summary, "d-1"));
    assert!(!email.subject.contains(['\r', '\n']), "{:?}", email.subject);
    assert!(
        email.subject.starts_with("[reelspool] evil\\r\\nBcc:"),
        "{:?}",
        email.subject
    );
}

#[test]
fn builtin_body_shows_error_and_log_tail_on_failure() {
    let mut summary = sample_summary("job-7", NoticeKind::Failed);
    summary.error = Some("worker exited with signal 9".into());
    summary.log_tail = vec!["clip 3 started".into(), "killed".into()];
    let email = NoticeTemplates::builtin().render_email(&NoticeFields::new(&summary, "d-1"));
    assert!(
        email.text.contains("Error:\nworker exited with signal 9\n"),
        "{}",
        email.text
    );
    assert!(
        email
            .text
            .contains("Last log lines:\nclip 3 started\nkilled\n"),
        "{}",
        email.text
    );
    assert!(
        email.html.contains("<pre>clip 3 started\nkilled</pre>"),
        "{}",
        email.html
    );
}

#[test]
fn builtin_body_omits_the_error_block_on_success() {
    let summary = sample_summary("job-7", NoticeKind::Done);
    let email = NoticeTemplates::builtin().render_email(&NoticeFields::new(&summary, "d-1"));
    assert!(!email.text.contains("Error:"), "{}", email.text);
    assert!(
        !email.text.contains("\n\n\n"),
        "no blank-line runs: {}",
        email.text
    );
}

#[test]
fn templates_dir_overrides_only_the_files_it_has() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("subject.txt"), "custom {{job_id}}\n").expect("write template");
    let templates = NoticeTemplates::load(Some(dir.path())).expect("templates load");
    let email = templates.render_email(&NoticeFields::new(
        &sample_summary("job-7", NoticeKind::Done),
        "d",
    ));
    assert_eq!(email.subject, "custom job-7");
    assert!(
        email.text.contains("Job interview-042 is done"),
        "{}",
        email.text
    );
}

#[test]
fn broken_override_names_its_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("body.html"), "{{nope}}").expect("write template");
    let err = NoticeTemplates::load(Some(dir.path())).expect_err("bad placeholder");
    assert!(err.to_string().contains("body.html:1"), "{err}");
}

#[test]
fn durations_read_like_a_clock() {
    assert_eq!(format_duration(42.46), "42.5s");
    assert_eq!(format_duration(245.0), "4m 05s");
    assert_eq!(format_duration(7389.4), "2h 03m 09s");
}

#[test]
fn clips_show_progress_against_the_total() {
    let mut summary = sample_summary("job-7", NoticeKind::Progress);
    summary.clips_done = 10;
    summary.clips_total = Some(40);
    assert_eq!(render("{{clips}}", &summary, Escape::Plain), "10 of 40");
}
