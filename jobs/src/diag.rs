//! Compiler-style diagnostics for YAML files.
//!
//! People write job files by hand and usually see our answer in a `.error` file beside their
//! rejected job, so every message has to stand on its own: which file, which line and column,
//! the line itself with a caret under the offending spot, and a hint that says what to write
//! instead. The layout copies rustc's because operators already know how to read it:
//!
//! ```text
//! error: infer_frames must be between 1 and 256, got 300
//!   --> /spool/incoming/job.yaml:9:17
//!    |
//!  9 |   infer_frames: 300
//!    |                 ^
//!    = help: 32 or 48 are the usual choices; use 32 to save GPU memory
//! ```
//!
//! Nothing here knows about jobs: the daemon formats its own configuration errors with the same
//! type, [`from_yaml_error`] and [`locate_key`].

use std::fmt;

use crate::text::{escape_lines, escape_text};

pub use crate::locate::{locate_key, locate_value};

/// One problem in one file, positioned when a position is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as it should be shown to the reader (usually its full path).
    pub file: String,
    /// 1-based line; 0 when the problem concerns the whole file (its size, its encoding).
    pub line: usize,
    /// 1-based column counted in characters, as YAML parsers count; 0 with `line` 0.
    pub column: usize,
    /// What is wrong, in one sentence.
    pub message: String,
    /// The text of line `line`, without its line break, when the file text was available.
    pub source_line: Option<String>,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem at `line`:`column` of `text` (both 1-based). A line past the end of the text
    /// is still reported, just without the quoted source line.
    pub fn at(
        file: &str,
        text: &str,
        line: usize,
        column: usize,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        Diagnostic {
            file: file.to_string(),
            line,
            column,
            message: message.into(),
            source_line: nth_line(text, line).map(str::to_string),
            hint,
        }
    }

    /// A problem with the file as a whole, which has no useful position.
    pub fn whole_file(file: &str, message: impl Into<String>, hint: Option<String>) -> Diagnostic {
        Diagnostic {
            file: file.to_string(),
            line: 0,
            column: 0,
            message: message.into(),
            source_line: None,
            hint,
        }
    }

    /// Whether this diagnostic points into the file rather than at the file.
    pub fn has_position(&self) -> bool {
        self.line > 0
    }
}

/// Line `line` (1-based) of `text`, without its line break.
fn nth_line(text: &str, line: usize) -> Option<&str> {
    let index = line.checked_sub(1)?;
    text.split('\n')
        .nth(index)
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
}

impl fmt::Display for Diagnostic {
    /// Every piece of text here can quote the user's file (its name, a value, the line
    /// itself), so each goes through [`escape_text`]: a rejection can be `cat` safely.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", escape_lines(&self.message))?;
        // The gutter: the line number right-aligned one column in, as in the project's
        // examples (` 9 | ...`), and everything else indented to match.
        let number_width = if self.has_position() {
            self.line.to_string().len() + 1
        } else {
            1
        };
        let arrow_pad = " ".repeat(number_width);
        let blank = " ".repeat(number_width + 1);
        let file = escape_text(&self.file);
        if self.has_position() {
            writeln!(f, "{arrow_pad}--> {file}:{}:{}", self.line, self.column)?;
        } else {
            writeln!(f, "{arrow_pad}--> {file}")?;
        }
        if let (true, Some(source)) = (self.has_position(), &self.source_line) {
            writeln!(f, "{blank}|")?;
            writeln!(f, "{:>number_width$} | {}", self.line, escape_text(source))?;
            writeln!(f, "{blank}| {}^", caret_padding(source, self.column))?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "{blank}= help: {}", escape_lines(hint))?;
        }
        Ok(())
    }
}

/// Spaces (and tabs where the source has tabs) that put a caret under character `column` of
/// the source line as shown, escapes included.
fn caret_padding(source: &str, column: usize) -> String {
    source
        .chars()
        .take(column.saturating_sub(1))
        .map(|c| {
            if c == '\t' {
                "\t".to_string()
            } else {
                " ".repeat(escape_text(c.encode_utf8(&mut [0; 4])).chars().count())
            }
        })
        .collect()
}

/// Renders several diagnostics the way a compiler would print them, one blank line apart.
pub fn render_all(diagnostics: &[Diagnostic]) -> String {
    let mut out = String::new();
    for (index, diagnostic) in diagnostics.iter().enumerate() {
        if index > 0 {
            out.push_str("\n\n");
        }
        out.push_str(&diagnostic.to_string());
    }
    out
}

/// Turns a `serde_yaml` error (syntax or type) into a diagnostic for `file`.
///
/// serde_yaml puts the position into its message ("... at line 3 column 5"); the diagnostic
/// shows the position in its own `-->` line, so it is taken out of the message here.
pub fn from_yaml_error(
    file: &str,
    text: &str,
    err: &serde_yaml::Error,
    hint: Option<String>,
) -> Diagnostic {
    let message = plain_yaml_message(err);
    match err.location() {
        Some(location) => Diagnostic::at(
            file,
            text,
            location.line(),
            location.column(),
            message,
            hint,
        ),
        None => Diagnostic::whole_file(file, message, hint),
    }
}

/// The message of a serde_yaml error without the positions it embeds, and with Rust type
/// names replaced by words a YAML author knows.
pub fn plain_yaml_message(err: &serde_yaml::Error) -> String {
    let mut message = strip_positions(&err.to_string());
    for (rust, words) in [
        ("expected u8", "expected a whole number from 0 to 255"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number, 0 or more"),
        (
            "expected i32",
            "expected a whole number from -2147483648 to 2147483647",
        ),
        ("expected f32", "expected a number"),
        ("expected a string", "expected text"),
        ("expected a sequence", "expected a list"),
    ] {
        message = message.replace(rust, words);
    }
    // "expected struct RenderFile" names one of our private types; say what it is instead.
    if let Some(start) = message.find("expected struct ") {
        let name_start = start + "expected struct ".len();
        let name_len = message[name_start..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(message.len() - name_start);
        message.replace_range(start..name_start + name_len, "expected a mapping of keys");
    }
    message
}

/// Removes " at line N column M" and " at position N" from a message.
fn strip_positions(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(found) = rest.find(" at ") {
        out.push_str(&rest[..found]);
        let after = &rest[found + 4..];
        if let Some(tail) = skip_position(after) {
            rest = tail;
        } else {
            out.push_str(" at ");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// If `text` starts with "line N column M" or "position N", the text after it.
fn skip_position(text: &str) -> Option<&str> {
    if let Some(after) = text.strip_prefix("line ") {
        let after = skip_digits(after)?;
        let after = after.strip_prefix(" column ")?;
        return skip_digits(after);
    }
    skip_digits(text.strip_prefix("position ")?)
}

fn skip_digits(text: &str) -> Option<&str> {
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    (digits > 0).then(|| &text[digits..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "name: a\nrender:\n  infer_frames: 300\n";

    #[test]
    fn renders_like_rustc_with_caret_under_column() {
        let d = Diagnostic::at(
            "/spool/job.yaml",
            JOB,
            3,
            17,
            "infer_frames must be between 1 and 256, got 300",
            Some("use 32 to save GPU memory".to_string()),
        );
        let expected = "error: infer_frames must be between 1 and 256, got 300\n  --> /spool/job.yaml:3:17\n   |\n 3 |   infer_frames: 300\n   |                 ^\n   = help: use 32 to save GPU memory";
        assert_eq!(d.to_string(), expected);
    }

    #[test]
    fn widens_gutter_for_long_line_numbers() {
        let text = "x\n".repeat(120);
        let d = Diagnostic::at("f.yaml", &text, 120, 1, "bad", None);
        let shown = d.to_string();
        assert!(shown.contains("    --> f.yaml:120:1"), "{shown}");
        assert!(shown.contains("\n 120 | x\n"), "{shown}");
        assert!(shown.contains("\n     | ^"), "{shown}");
    }

    #[test]
    fn whole_file_problem_has_no_source_line() {
        let d = Diagnostic::whole_file("f.yaml", "file is too large", Some("split it".into()));
        assert_eq!(
            d.to_string(),
            "error: file is too large\n --> f.yaml\n  = help: split it"
        );
    }

    #[test]
    fn caret_follows_tabs_in_the_source_line() {
        let d = Diagnostic::at("f.yaml", "\tkey: v\n", 1, 3, "bad", None);
        assert!(d.to_string().contains("| \t ^"), "{d}");
    }

    #[test]
    fn quoted_user_text_is_escaped_and_the_caret_still_lines_up() {
        let d = Diagnostic::at(
            "\u{1b}]0;x\u{7}.yaml",
            "name: a\u{1b}[2Jb\u{202e}c\n",
            1,
            14,
            "name `a\u{1b}[2Jb` is bad\r",
            Some("rename\u{0}it".to_string()),
        );
        let shown = d.to_string();
        assert!(
            !shown.chars().any(|c| c != '\n' && crate::needs_escape(c)),
            "{shown:?}"
        );
        assert!(shown.contains("--> \\x1b]0;x\\x07.yaml:1:14"), "{shown}");
        assert!(shown.contains("| name: a\\x1b[2Jb\\u{202e}c"), "{shown}");
        // Column 14 is the `c`, after the escaped ESC (4 wide) and bidi control (8 wide).
        let caret_line = shown.lines().find(|l| l.ends_with('^')).expect("caret");
        let source_line = shown.lines().find(|l| l.contains("name: a")).expect("src");
        let caret_col = caret_line.chars().count() - 1;
        assert_eq!(source_line.chars().nth(caret_col), Some('c'), "{shown}");
        assert!(shown.contains("rename\\0it"), "{shown}");
    }

    #[test]
    fn yaml_syntax_error_keeps_position_out_of_message() {
        let text = "a: 1\nb: [1, 2\n";
        let err = serde_yaml::from_str::<serde_yaml::Value>(text).expect_err("unclosed list");
        let d = from_yaml_error("f.yaml", text, &err, None);
        assert!(d.line >= 2, "{d}");
        assert!(!d.message.contains(" at line "), "{}", d.message);
    }

    #[test]
    fn yaml_type_error_names_key_and_uses_plain_words() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Config {
            count: u32,
        }
        let text = "count: many\n";
        let err = serde_yaml::from_str::<Config>(text).expect_err("not a number");
        let d = from_yaml_error("f.yaml", text, &err, None);
        assert_eq!((d.line, d.column), (1, 8));
        assert!(
            d.message.contains("expected a whole number"),
            "{}",
            d.message
        );
        assert!(d.message.starts_with("count: "), "{}", d.message);
    }

    #[test]
    fn strip_positions_leaves_other_at_words() {
        assert_eq!(
            strip_positions("look at this at line 3 column 4, context at position 7"),
            "look at this, context"
        );
    }
}
