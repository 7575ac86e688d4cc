//! Notice texts from small templates with `{{placeholder}}` substitution.
//!
//! A template engine would be a large dependency for four short files, and
//! a large language for operators to learn. This one knows three forms:
//!
//! - `{{name}}`: the value of a field (see [`FIELD_NAMES`]);
//! - `{{#name}}...{{/name}}`: the inside only when the field is not empty;
//! - `{{^name}}...{{/name}}`: the inside only when the field is empty.
//!
//! A section tag alone on its line takes the line with it, so sections do
//! not leave blank lines behind. Unknown names and unbalanced sections are
//! errors at load time, with the line, so a typo stops the daemon at start
//! instead of producing odd mail. Values are escaped for the output: HTML
//! escaping in the HTML alternative, Slack's three entities in Slack text,
//! nothing more in plain text. Before that, every value has its control and
//! bidirectional characters shown as escapes ([`jobs::escape_text`]): a job's
//! paths, errors and log lines are user text, and must not reach a mail
//! subject or a chat as terminal sequences or reordered text. Literal `{{`
//! cannot be written.

use std::path::{Path, PathBuf};

use crate::clock::format_utc;
use crate::{JobSummary, NoticeError};

/// The names a template may use.
pub const FIELD_NAMES: [&str; 14] = [
    "job_name",
    "job_id",
    "state",
    "event",
    "output",
    "duration",
    "clips",
    "gpu",
    "error",
    "log_tail",
    "submitted_at",
    "started_at",
    "finished_at",
    "delivery_id",
];

/// How field values are escaped when substituted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escape {
    Plain,
    Html,
    Slack,
}

/// The values of every field for one notice, already formatted as text.
#[derive(Debug, Clone)]
pub(crate) struct NoticeFields {
    values: [String; FIELD_NAMES.len()],
}

impl NoticeFields {
    pub(crate) fn new(summary: &JobSummary, delivery_id: &str) -> NoticeFields {
        let mut fields = NoticeFields::unescaped(summary, delivery_id);
        for (name, value) in FIELD_NAMES.iter().zip(fields.values.iter_mut()) {
            *value = if *name == "log_tail" {
                jobs::escape_lines(value)
            } else {
                jobs::escape_text(value).into_owned()
            };
        }
        fields
    }

    /// The values as the summary has them; `log_tail` is the one field of several lines.
    fn unescaped(summary: &JobSummary, delivery_id: &str) -> NoticeFields {
        let time = |ms: Option<u64>| ms.map(format_utc).unwrap_or_default();
        let clips = match summary.clips_total {
            Some(total) => format!("{} of {total}", summary.clips_done),
            None if summary.clips_done > 0 => summary.clips_done.to_string(),
            None => String::new(),
        };
        NoticeFields {
            values: [
                summary.name.clone(),
                summary.job_id.clone(),
                summary.state.clone(),
                summary.event.as_str().to_string(),
                summary
                    .output
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                summary
                    .duration_secs
                    .map(format_duration)
                    .unwrap_or_default(),
                clips,
                summary.gpu.clone().unwrap_or_default(),
                summary.error.clone().unwrap_or_default(),
                summary.log_tail.join("\n"),
                time(Some(summary.submitted_at_ms)),
                time(summary.started_at_ms),
                time(summary.finished_at_ms),
                delivery_id.to_string(),
            ],
        }
    }

    fn get(&self, field: usize) -> &str {
        &self.values[field]
    }
}

/// "42.5s", "4m 05s", "2h 03m 09s".
fn format_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return String::new();
    }
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    // Whole seconds are enough once minutes are shown; the cast cannot
    // overflow for any job that ran less than 584 billion years.
    let whole = secs.round() as u64;
    let (h, m, s) = (whole / 3600, whole / 60 % 60, whole % 60);
    if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else {
        format!("{m}m {s:02}s")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Text(String),
    Field(usize),
    Section {
        field: usize,
        inverted: bool,
        body: Vec<Node>,
    },
}

/// One parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    nodes: Vec<Node>,
}

struct OpenSection {
    field: usize,
    inverted: bool,
    line: usize,
    outer: Vec<Node>,
}

impl Template {
    /// Parses `text`; `origin` names the file in errors.
    pub fn parse(origin: &Path, text: &str) -> Result<Template, NoticeError> {
        let error = |line: usize, message: String| NoticeError::Template {
            path: origin.to_path_buf(),
            line,
            message,
        };
        let mut nodes: Vec<Node> = Vec::new();
        let mut open: Vec<OpenSection> = Vec::new();
        let mut rest = text;
        let mut line = 1;
        // Whether `rest` begins at the start of a source line.
        let mut rest_at_line_start = true;
        while let Some(start) = rest.find("{{") {
            let mut before = &rest[..start];
            line += before.matches('\n').count();
            let Some(len) = rest[start..].find("}}") else {
                return Err(error(line, "`{{` without a closing `}}`".into()));
            };
            let tag = rest[start + 2..start + len].trim();
            let tag_line = line;
            let mut after = &rest[start + len + 2..];
            let mut consumed_line = false;
            if tag.starts_with(['#', '^', '/']) {
                // A section tag alone on its line: drop the line's indent
                // before it and the newline after it.
                let indent_start = before.rfind('\n').map(|i| i + 1);
                let alone_before = match indent_start {
                    Some(i) => before[i..].trim().is_empty(),
                    None => rest_at_line_start && before.trim().is_empty(),
                };
                let line_end = after
                    .find('\n')
                    .filter(|&end| after[..end].trim().is_empty());
                if let (true, Some(end)) = (alone_before, line_end) {
                    before = &before[..indent_start.unwrap_or(0)];
                    after = &after[end + 1..];
                    line += 1;
                    consumed_line = true;
                }
            }
            rest_at_line_start = consumed_line;
            if !before.is_empty() {
                nodes.push(Node::Text(before.to_string()));
            }
            let field_index = |name: &str| {
                FIELD_NAMES
                    .iter()
                    .position(|known| *known == name)
                    .ok_or_else(|| {
                        error(
                            tag_line,
                            format!(
                                "unknown placeholder {name:?}; known: {}",
                                FIELD_NAMES.join(", ")
                            ),
                        )
                    })
            };
            if let Some(name) = tag.strip_prefix('#').or_else(|| tag.strip_prefix('^')) {
                open.push(OpenSection {
                    field: field_index(name.trim())?,
                    inverted: tag.starts_with('^'),
                    line: tag_line,
                    outer: std::mem::take(&mut nodes),
                });
            } else if let Some(name) = tag.strip_prefix('/') {
                let field = field_index(name.trim())?;
                let Some(section) = open.pop() else {
                    return Err(error(
                        tag_line,
                        format!("`{{{{/{}}}}}` closes no section", name.trim()),
                    ));
                };
                if section.field != field {
                    return Err(error(
                        tag_line,
                        format!(
                            "`{{{{/{}}}}}` closes the section `{}` opened on line {}",
                            name.trim(),
                            FIELD_NAMES[section.field],
                            section.line
                        ),
                    ));
                }
                let body = std::mem::replace(&mut nodes, section.outer);
                nodes.push(Node::Section {
                    field,
                    inverted: section.inverted,
                    body,
                });
            } else {
                nodes.push(Node::Field(field_index(tag)?));
            }
            rest = after;
        }
        if let Some(section) = open.last() {
            return Err(error(
                section.line,
                format!("section `{}` is never closed", FIELD_NAMES[section.field]),
            ));
        }
        if !rest.is_empty() {
            nodes.push(Node::Text(rest.to_string()));
        }
        Ok(Template { nodes })
    }

    pub(crate) fn render(&self, fields: &NoticeFields, escape: Escape) -> String {
        let mut out = String::new();
        render_nodes(&self.nodes, fields, escape, &mut out);
        out
    }
}

fn render_nodes(nodes: &[Node], fields: &NoticeFields, escape: Escape, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Field(field) => push_escaped(out, fields.get(*field), escape),
            Node::Section {
                field,
                inverted,
                body,
            } => {
                if fields.get(*field).is_empty() == *inverted {
                    render_nodes(body, fields, escape, out);
                }
            }
        }
    }
}

fn push_escaped(out: &mut String, value: &str, escape: Escape) {
    for c in value.chars() {
        match (escape, c) {
            (Escape::Html | Escape::Slack, '&') => out.push_str("&amp;"),
            (Escape::Html | Escape::Slack, '<') => out.push_str("&lt;"),
            (Escape::Html | Escape::Slack, '>') => out.push_str("&gt;"),
            (Escape::Html, '"') => out.push_str("&quot;"),
            (Escape::Html, '\'') => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
}

/// The four notice templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticeTemplates {
    subject: Template,
    body_text: Template,
    body_html: Template,
    slack: Template,
}

/// The template files, with the built-in text of each.
const FILES: [(&str, &str); 4] = [
    (
        "subject.txt",
        include_str!("../../templates/notices/subject.txt"),
    ),
    ("body.txt", include_str!("../../templates/notices/body.txt")),
    (
        "body.html",
        include_str!("../../templates/notices/body.html"),
    ),
    (
        "slack.txt",
        include_str!("../../templates/notices/slack.txt"),
    ),
];

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EmailText {
    pub(crate) subject: String,
    pub(crate) text: String,
    pub(crate) html: String,
}

impl NoticeTemplates {
    /// The templates shipped in `templates/notices/`, compiled in.
    pub fn builtin() -> NoticeTemplates {
        Self::load(None).expect("invariant: the built-in templates parse (checked by a unit test)")
    }

    /// Loads the templates from `dir`; a file missing there is taken from
    /// the built-in set, so an operator can override only one.
    pub fn load(dir: Option<&Path>) -> Result<NoticeTemplates, NoticeError> {
        let mut parsed = Vec::with_capacity(FILES.len());
        for (file, builtin) in FILES {
            let custom = dir.map(|dir| dir.join(file)).filter(|path| path.exists());
            let template = match custom {
                Some(path) => {
                    let text =
                        std::fs::read_to_string(&path).map_err(|source| NoticeError::Io {
                            action: "read the notice template",
                            path: path.clone(),
                            source,
                        })?;
                    Template::parse(&path, &text)?
                }
                None => Template::parse(&PathBuf::from("<built-in>").join(file), builtin)?,
            };
            parsed.push(template);
        }
        let [subject, body_text, body_html, slack]: [Template; 4] = parsed
            .try_into()
            .expect("invariant: one template was parsed per entry of FILES");
        Ok(NoticeTemplates {
            subject,
            body_text,
            body_html,
            slack,
        })
    }

    pub(crate) fn render_email(&self, fields: &NoticeFields) -> EmailText {
        let subject = self.subject.render(fields, Escape::Plain);
        EmailText {
            // One line, whatever the values hold: a newline in a subject
            // would at best break the header and at worst inject another.
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            text: self.body_text.render(fields, Escape::Plain),
            html: self.body_html.render(fields, Escape::Html),
        }
    }

    pub(crate) fn render_slack(&self, fields: &NoticeFields) -> String {
        self.slack
            .render(fields, Escape::Slack)
            .trim_end()
            .to_string()
    }
}

#[cfg(test)]
mod tests;
