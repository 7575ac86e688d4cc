//! Batch job files: one file, many jobs.
//!
//! A job file with `batch:` gives its rows either inline (`items:`, a list of mappings) or in
//! a CSV file with a header row (`csv: /path/rows.csv`). Every row names `image`, `audio`,
//! `prompt` and `output`; every other key of the file (`render`, `engine`, `notify`, a
//! `template`, ...) is shared by all rows, so the file leaves out `inputs` and `output.path`.
//!
//! [`parse_batch`] checks the shared part where it stands in the file (the `batch:` block is
//! blanked, so every line keeps its number), then each row as if it were the `inputs` and
//! `output.path` of a job of its own. A problem in a row is reported at the row: the CSV cell
//! (file, line, column) or the list item, with the row number and the column's name. The
//! caller files the jobs only when every row passed: all or none.

mod csv;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::diag::{locate_key, Diagnostic};
use crate::error::{JobFileError, JobsError};
use crate::file::JOB_KEYS;
use crate::parse::{merged_document, read_document, resolve, ParseContext};
use crate::paths::{check_input, CanonicalRoots};
use crate::rules::check_name;
use crate::source::Source;
use crate::spec::JobSpec;
use crate::text::{check_text, decode_utf8, read_text_file, ReadFailure};
use crate::validate::check_document;

/// The columns every row gives, in the order a row's check lays them out.
pub const BATCH_COLUMNS: [&str; 4] = ["image", "audio", "prompt", "output"];
/// The most rows one batch file may hold.
pub const MAX_BATCH_ROWS: usize = 10_000;

/// A batch file, checked: one resolved job per row, in row order.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSpec {
    /// The batch's name: the file's `name:` or its stem; row *n* is the job `<name>-<nnn>`.
    pub name: String,
    /// The rows' jobs; `rows[i]` is row `i + 1`.
    pub rows: Vec<JobSpec>,
    /// The CSV file the rows came from (resolved), when they were not inline.
    pub csv: Option<PathBuf>,
    /// `batch.notify_each: true`: every job also sends its own notices; by default the batch
    /// sends one notice when its last job ends, and its jobs send only `started`/`progress`.
    pub notify_each: bool,
}

/// Whether `text` is a batch file: it has a top-level `batch:` key. Decided on the text so a
/// file with broken YAML still gets the ordinary job file's diagnostics.
pub fn is_batch(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim_end();
        line == "batch:" || line.starts_with("batch:") || line.starts_with("\"batch\":")
    })
}

/// [`parse_batch`] for bytes read by the caller (the daemon reads claimed files itself).
pub fn parse_batch_bytes(
    source_name: &str,
    bytes: &[u8],
    default_name: &str,
    ctx: &ParseContext,
) -> Result<BatchSpec, JobFileError> {
    let text = decode_utf8(source_name, bytes.to_vec()).map_err(|d| JobsError::Invalid(vec![d]))?;
    parse_batch(source_name, &text, default_name, ctx)
}

/// Checks a batch file and every row it names; see the module docs.
pub fn parse_batch(
    source_name: &str,
    text: &str,
    default_name: &str,
    ctx: &ParseContext,
) -> Result<BatchSpec, JobFileError> {
    check_text(source_name, text).map_err(|d| JobsError::Invalid(vec![d]))?;
    let original = Source {
        name: source_name,
        text,
    };
    let shared_text = blank_batch_block(text);
    let shared = Source {
        name: source_name,
        text: &shared_text,
    };
    let roots = CanonicalRoots::new(ctx.roots);
    let only_batch = shared_text
        .lines()
        .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
    let doc = if only_batch {
        crate::file::JobFile::default()
    } else {
        merged_document(&shared, ctx, &roots).map_err(JobsError::Invalid)?
    };
    let mut problems = Vec::new();
    if doc.inputs.is_some() {
        problems.push(shared.at_key(
            &["inputs"],
            "a batch file gives its inputs in the rows of `batch:`, not under `inputs:`".into(),
            Some("remove `inputs:`; give `image`, `audio` and `prompt` in each row".into()),
        ));
    }
    if doc.output.as_ref().is_some_and(|o| o.path.is_some()) {
        problems.push(shared.at_key(
            &["output", "path"],
            "a batch file gives each row's `output`, not `output.path`".into(),
            Some("remove `path:` under `output:`; give `output` in each row".into()),
        ));
    }
    let base = doc.name.clone().unwrap_or_else(|| default_name.to_string());
    if let Err(why) = check_name(&format!("{base}-001")) {
        problems.push(shared.at_key(
            &["name"],
            format!("the batch's jobs would be named `{base}-001`, ... and such a name {why}"),
            Some("add `name: course-week-1` (letters, digits, `.`, `_`, `-`)".into()),
        ));
    }
    // The shared keys' own rules (an engine's kind and name ...), checked once, where they are
    // written, with stand-in inputs.
    let mut stand_in = doc.clone();
    stand_in.name = Some(format!("{base}-001"));
    stand_in.inputs = Some(crate::file::InputsFile {
        image: Some(PathBuf::from("/batch-row/image")),
        audio: Some(PathBuf::from("/batch-row/audio")),
        prompt: Some(String::new()),
    });
    let mut output = stand_in.output.take().unwrap_or_default();
    output.path = Some(PathBuf::from("/batch-row/output"));
    stand_in.output = Some(output);
    if let Err(found) = resolve(stand_in, &base, &shared) {
        problems.extend(found);
    }
    if !problems.is_empty() {
        return Err(JobsError::Invalid(problems));
    }

    let (rows, csv, notify_each) = read_rows(&original, &roots)?;
    let mut specs = Vec::with_capacity(rows.len());
    let mut outputs: HashMap<PathBuf, usize> = HashMap::new();
    for row in &rows {
        match check_row(row, &doc, &base, &roots) {
            Ok(spec) => {
                if let Some(first) = outputs.insert(spec.output.path.clone(), row.number) {
                    problems.push(row.at(
                        Some("output"),
                        format!(
                            "`{}` is also the output of row {first}",
                            spec.output.path.display()
                        ),
                        Some("give every row its own output file".into()),
                    ));
                }
                specs.push(spec);
            }
            Err(found) => problems.extend(found),
        }
    }
    if !problems.is_empty() {
        return Err(JobsError::Invalid(problems));
    }
    Ok(BatchSpec {
        name: base,
        rows: specs,
        csv,
        notify_each,
    })
}

/// `text` with the lines of its top-level `batch:` block replaced by empty lines: the shared
/// keys, at the lines they were written on.
fn blank_batch_block(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let starts_key = line
            .chars()
            .next()
            .is_some_and(|c| !c.is_whitespace() && c != '#');
        if starts_key {
            inside = line.starts_with("batch:") || line.starts_with("\"batch\":");
        }
        if inside {
            if line.ends_with('\n') {
                out.push('\n');
            }
        } else {
            out.push_str(line);
        }
    }
    out
}

/// Where a row came from, for its diagnostics.
enum Place {
    /// Item `number` of `batch.items`, in the job file.
    Item { file: String, line: usize },
    /// A CSV record; `cells` holds each column's line and column.
    Csv {
        file: String,
        text: std::rc::Rc<String>,
        line: usize,
        cells: HashMap<&'static str, (usize, usize)>,
    },
}

/// One row as written: its number (from 1) and its four cells.
struct Row {
    number: usize,
    cells: HashMap<&'static str, String>,
    place: Place,
}

impl Row {
    /// A problem with this row, or with one of its columns.
    fn at(&self, column: Option<&str>, message: String, hint: Option<String>) -> Diagnostic {
        let what = match column {
            Some(column) => format!("row {}, column `{column}`: {message}", self.number),
            None => format!("row {}: {message}", self.number),
        };
        match &self.place {
            Place::Item { file, line } => Diagnostic {
                file: file.clone(),
                line: *line,
                column: if *line > 0 { 1 } else { 0 },
                message: what,
                source_line: None,
                hint,
            },
            Place::Csv {
                file,
                text,
                line,
                cells,
            } => {
                let (line, col) = column
                    .and_then(|c| cells.get(c).copied())
                    .unwrap_or((*line, 1));
                Diagnostic::at(file, text, line, col, what, hint)
            }
        }
    }
}

fn batch_problem(src: &Source, key: &[&str], message: &str, hint: &str) -> JobsError {
    JobsError::Invalid(vec![src.at_value(key, message.into(), Some(hint.into()))])
}

/// The rows of `batch:`, from its items or its CSV file.
fn read_rows(
    src: &Source,
    roots: &CanonicalRoots,
) -> Result<(Vec<Row>, Option<PathBuf>, bool), JobsError> {
    let value: serde_yaml::Value = serde_yaml::from_str(src.text).map_err(|err| {
        JobsError::Invalid(vec![crate::diag::from_yaml_error(
            src.name, src.text, &err, None,
        )])
    })?;
    let hint = "write `batch:` with `items:` (a list of rows) or `csv: /path/rows.csv`, and \
                optionally `notify_each: true`";
    let Some(batch) = value.get("batch").and_then(|b| b.as_mapping()) else {
        return Err(batch_problem(
            src,
            &["batch"],
            "`batch:` must be a mapping",
            hint,
        ));
    };
    let mut items = None;
    let mut csv_path = None;
    let mut notify_each = false;
    for (key, value) in batch {
        match key.as_str() {
            Some("notify_each") => match value.as_bool() {
                Some(flag) => notify_each = flag,
                None => {
                    return Err(batch_problem(
                        src,
                        &["batch", "notify_each"],
                        "`batch.notify_each` must be true or false",
                        "write `notify_each: true` to have every job send its own notices",
                    ))
                }
            },
            Some("items") => items = Some(value),
            Some("csv") => csv_path = Some(value),
            other => {
                return Err(JobsError::Invalid(vec![src.at_key(
                    &["batch", other.unwrap_or("?")],
                    format!("unknown key `{}` in `batch`", other.unwrap_or("?")),
                    Some(hint.into()),
                )]))
            }
        }
    }
    let rows = match (items, csv_path) {
        (Some(items), None) => (rows_from_items(src, items)?, None),
        (None, Some(path)) => {
            let Some(path) = path.as_str() else {
                return Err(batch_problem(
                    src,
                    &["batch", "csv"],
                    "`batch.csv` must be a path",
                    hint,
                ));
            };
            let real =
                check_input("batch.csv", Path::new(path), &roots.inputs).map_err(|problem| {
                    JobsError::Invalid(vec![src.at_value(
                        &["batch", "csv"],
                        problem.message,
                        Some(problem.hint),
                    )])
                })?;
            (rows_from_csv(&real)?, Some(real))
        }
        _ => {
            return Err(batch_problem(
                src,
                &["batch"],
                "`batch:` needs exactly one of `items:` and `csv:`",
                hint,
            ))
        }
    };
    if rows.0.is_empty() {
        return Err(batch_problem(
            src,
            &["batch"],
            "the batch has no rows",
            "give at least one row",
        ));
    }
    if rows.0.len() > MAX_BATCH_ROWS {
        return Err(batch_problem(
            src,
            &["batch"],
            &format!(
                "the batch has {} rows, more than {MAX_BATCH_ROWS}",
                rows.0.len()
            ),
            "split it into several batch files",
        ));
    }
    Ok((rows.0, rows.1, notify_each))
}

fn rows_from_items(src: &Source, items: &serde_yaml::Value) -> Result<Vec<Row>, JobsError> {
    let Some(list) = items.as_sequence() else {
        return Err(batch_problem(
            src,
            &["batch", "items"],
            "`batch.items` must be a list",
            "write each row as `- { image: ..., audio: ..., prompt: ..., output: ... }`",
        ));
    };
    let line = locate_key(src.text, &["batch", "items"]).map_or(0, |(line, _)| line);
    let mut rows = Vec::with_capacity(list.len());
    let mut problems = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let mut row = Row {
            number: i + 1,
            cells: HashMap::new(),
            place: Place::Item {
                file: src.name.to_string(),
                line,
            },
        };
        let Some(mapping) = item.as_mapping() else {
            problems.push(row.at(
                None,
                "a row must be a mapping".into(),
                Some("write `- { image: ..., audio: ..., prompt: ..., output: ... }`".into()),
            ));
            continue;
        };
        for (key, value) in mapping {
            let key_text = key.as_str().unwrap_or("?");
            let Some(column) = BATCH_COLUMNS.iter().find(|c| **c == key_text) else {
                problems.push(row.at(
                    None,
                    format!("unknown column `{key_text}`"),
                    Some("a row gives `image`, `audio`, `prompt` and `output`".into()),
                ));
                continue;
            };
            match value.as_str() {
                Some(text) => {
                    row.cells.insert(column, text.to_string());
                }
                None => problems.push(row.at(
                    Some(column),
                    "the value must be text".into(),
                    Some("quote it".into()),
                )),
            }
        }
        rows.push(row);
    }
    if problems.is_empty() {
        Ok(rows)
    } else {
        Err(JobsError::Invalid(problems))
    }
}

fn rows_from_csv(path: &Path) -> Result<Vec<Row>, JobsError> {
    let shown = path.display().to_string();
    let text = read_text_file(path, &shown).map_err(|failure| match failure {
        ReadFailure::Io(source) => JobsError::ReadJobFile {
            path: path.to_path_buf(),
            source,
        },
        ReadFailure::Content(diagnostic) => JobsError::Invalid(vec![diagnostic]),
    })?;
    let records = csv::read_records(&text).map_err(|err| {
        JobsError::Invalid(vec![Diagnostic::at(
            &shown,
            &text,
            err.line,
            err.column,
            err.message,
            None,
        )])
    })?;
    let mut records = records.into_iter();
    let Some(header) = records.next() else {
        return Ok(Vec::new());
    };
    let header_hint = "the header row names the columns: image,audio,prompt,output";
    let mut columns: Vec<&'static str> = Vec::new();
    let mut problems = Vec::new();
    for field in &header.fields {
        let name = field.text.trim();
        match BATCH_COLUMNS.iter().find(|c| **c == name) {
            Some(column) if columns.contains(column) => problems.push(Diagnostic::at(
                &shown,
                &text,
                field.line,
                field.column,
                format!("column `{name}` appears twice in the header"),
                Some(header_hint.into()),
            )),
            Some(column) => columns.push(column),
            None => problems.push(Diagnostic::at(
                &shown,
                &text,
                field.line,
                field.column,
                format!("unknown column `{name}` in the header"),
                Some(header_hint.into()),
            )),
        }
    }
    for column in BATCH_COLUMNS {
        if !columns.contains(&column) && problems.is_empty() {
            problems.push(Diagnostic::at(
                &shown,
                &text,
                header.line,
                1,
                format!("the header has no column `{column}`"),
                Some(header_hint.into()),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(JobsError::Invalid(problems));
    }
    let text = std::rc::Rc::new(text);
    let mut rows = Vec::new();
    for (i, record) in records.enumerate() {
        let mut row = Row {
            number: i + 1,
            cells: HashMap::new(),
            place: Place::Csv {
                file: shown.clone(),
                text: std::rc::Rc::clone(&text),
                line: record.line,
                cells: HashMap::new(),
            },
        };
        if record.fields.len() != columns.len() {
            problems.push(row.at(
                None,
                format!(
                    "{} fields where the header has {}",
                    record.fields.len(),
                    columns.len()
                ),
                Some("quote a field that holds a comma: \"like, this\"".into()),
            ));
            continue;
        }
        for (column, field) in columns.iter().zip(record.fields) {
            if let Place::Csv { cells, .. } = &mut row.place {
                cells.insert(column, (field.line, field.column));
            }
            let value = if *column == "prompt" {
                field.text
            } else {
                field.text.trim().to_string()
            };
            row.cells.insert(column, value);
        }
        rows.push(row);
    }
    if problems.is_empty() {
        Ok(rows)
    } else {
        Err(JobsError::Invalid(problems))
    }
}

/// Checks one row as the inputs and output of a job that shares everything else with `shared`.
fn check_row(
    row: &Row,
    shared: &crate::file::JobFile,
    base: &str,
    roots: &CanonicalRoots,
) -> Result<JobSpec, Vec<Diagnostic>> {
    let mut missing = Vec::new();
    for column in BATCH_COLUMNS {
        if row.cells.get(column).is_none_or(|v| v.is_empty()) {
            missing.push(row.at(
                Some(column),
                "the cell is empty".into(),
                Some(format!("every row needs its `{column}`")),
            ));
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    // The row as a job file of its own: a column's problem comes back at that column's line.
    let quoted = |column: &str| {
        serde_json::to_string(row.cells.get(column).map_or("", String::as_str))
            .expect("a string always serialises to JSON")
    };
    let text = format!(
        "inputs:\n  image: {}\n  audio: {}\n  prompt: {}\noutput:\n  path: {}\n",
        quoted("image"),
        quoted("audio"),
        quoted("prompt"),
        quoted("output")
    );
    let src = Source {
        name: "batch row",
        text: &text,
    };
    let column_at = |line: usize| match line {
        2 => Some("image"),
        3 => Some("audio"),
        4 => Some("prompt"),
        6 => Some("output"),
        _ => None,
    };
    let at_row = |found: Vec<Diagnostic>| -> Vec<Diagnostic> {
        found
            .into_iter()
            .map(|d| row.at(column_at(d.line), d.message, d.hint))
            .collect()
    };
    let mut doc = read_document(&src, JOB_KEYS, "batch row").map_err(at_row)?;
    let problems = check_document(&mut doc, &src, roots);
    if !problems.is_empty() {
        return Err(at_row(problems));
    }
    let name = format!("{base}-{:03}", row.number);
    doc.name = Some(name.clone());
    let merged = doc.overlay(shared.clone());
    resolve(merged, &name, &src).map_err(at_row)
}

#[cfg(test)]
mod tests;
