//! Getting text out of a job or template file without trusting it: bounded size, valid UTF-8,
//! something in it. These checks come before any YAML parsing, so that a huge or binary file
//! costs nothing and gets a message that says what it is.

use crate::diag::Diagnostic;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The largest job or template file accepted. A real job file is a few hundred bytes; the
/// limit only has to keep a mistaken `cp video.mp4 incoming/` from being parsed.
pub const MAX_JOB_FILE_BYTES: u64 = 1 << 20;

/// Why a file's text could not be had.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The operating system refused: the caller reports it with the path.
    Io(io::Error),
    /// The content is unusable, with a diagnostic that says how.
    Content(Diagnostic),
}

/// Reads `path` as UTF-8, refusing files over [`MAX_JOB_FILE_BYTES`] before reading them
/// (and, should the file grow meanwhile, never reading more than one byte past the limit).
pub(crate) fn read_text_file(path: &Path, shown: &str) -> Result<String, ReadFailure> {
    let file = File::open(path).map_err(ReadFailure::Io)?;
    let size = file.metadata().map_err(ReadFailure::Io)?.len();
    if size > MAX_JOB_FILE_BYTES {
        return Err(ReadFailure::Content(too_large(shown, size)));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(MAX_JOB_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadFailure::Io)?;
    if bytes.len() as u64 > MAX_JOB_FILE_BYTES {
        return Err(ReadFailure::Content(too_large(shown, bytes.len() as u64)));
    }
    decode_utf8(shown, bytes).map_err(ReadFailure::Content)
}

/// Checks text that is already in memory: size and emptiness.
pub(crate) fn check_text(shown: &str, text: &str) -> Result<(), Diagnostic> {
    if text.len() as u64 > MAX_JOB_FILE_BYTES {
        return Err(too_large(shown, text.len() as u64));
    }
    if text.trim().is_empty() {
        return Err(Diagnostic::whole_file(
            shown,
            "the file is empty",
            Some(
                "a job needs at least `inputs:` (image, audio, prompt) and `output: {path: ...}`"
                    .to_string(),
            ),
        ));
    }
    Ok(())
}

fn too_large(shown: &str, bytes: u64) -> Diagnostic {
    Diagnostic::whole_file(
        shown,
        format!("the file is {bytes} bytes, more than the {MAX_JOB_FILE_BYTES}-byte limit for job files"),
        Some("a job file holds settings and paths only; media files are referenced by path, never pasted in".to_string()),
    )
}

/// Decodes UTF-8, or reports the line and column of the first byte that is not.
pub(crate) fn decode_utf8(shown: &str, bytes: Vec<u8>) -> Result<String, Diagnostic> {
    match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(err) => {
            let bytes = err.as_bytes();
            let good = err.utf8_error().valid_up_to();
            // The valid prefix is UTF-8 by definition, so lines and columns can be counted on it.
            let prefix = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
            let line = prefix.matches('\n').count() + 1;
            let line_start = prefix.rfind('\n').map_or(0, |i| i + 1);
            let column = prefix[line_start..].chars().count() + 1;
            let line_end = bytes[good..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |i| good + i);
            let shown_line = String::from_utf8_lossy(&bytes[line_start..line_end]).into_owned();
            Err(Diagnostic {
                file: shown.to_string(),
                line,
                column,
                message: format!(
                    "the file is not valid UTF-8: byte 0x{:02x} at line {line}, column {column}",
                    bytes[good]
                ),
                source_line: Some(shown_line.trim_end_matches('\r').to_string()),
                hint: Some(
                    "save the file as UTF-8 (most editors have it under \"encoding\")".to_string(),
                ),
            })
        }
    }
}

/// Whether `c` must never reach a terminal, a log line or a mail as itself: C0 controls other
/// than tab (ESC, CR, LF, NUL, ...), DEL, C1 controls, and the Unicode bidirectional controls
/// that make text read in a different order than it is stored (U+200E/F, U+202A–U+202E,
/// U+2066–U+2069, U+061C).
pub fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// User-supplied text (a file name, a job name, a prompt, a path, a message quoting them) made
/// safe to print: every character for which [`needs_escape`] holds is shown as an escape
/// (`\n`, `\r`, `\0`, `\x1b`, `\u{202e}`), everything else as it is. The one helper used
/// wherever such text is shown: diagnostics and `.error` files, logs, the command line and
/// notices. A backslash is left alone, so ordinary paths read as written.
pub fn escape_text(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if !needs_escape(c) {
            out.push(c);
            continue;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// [`escape_text`] for text of several lines: each line is escaped, the line breaks between
/// them are kept (a lone CR is still shown as `\r`).
pub fn escape_lines(text: &str) -> String {
    text.split('\n')
        .map(escape_text)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dangerous_character_is_shown_as_an_escape() {
        let raw = "a\u{1b}[31mb\rc\nd\0e\u{7f}f\u{9b}g\u{202e}h\u{2066}i\u{200f}j\u{061c}k";
        let shown = escape_text(raw);
        assert_eq!(
            shown,
            "a\\x1b[31mb\\rc\\nd\\0e\\x7ff\\u{009b}g\\u{202e}h\\u{2066}i\\u{200f}j\\u{061c}k"
        );
        assert!(!shown.chars().any(needs_escape), "{shown}");
    }

    #[test]
    fn plain_text_tabs_and_backslashes_are_kept_as_they_are() {
        let raw = "caf\u{e9}\tC:\\dir \u{65e5}\u{672c}";
        assert!(matches!(escape_text(raw), std::borrow::Cow::Borrowed(text) if text == raw));
    }

    #[test]
    fn lines_keep_their_breaks_but_not_their_carriage_returns() {
        assert_eq!(escape_lines("one\r\ntwo\u{1b}\n"), "one\\r\ntwo\\x1b\n");
    }

    #[test]
    fn non_utf8_byte_is_located() {
        let bytes = b"name: a\nprompt: caf\xe9 au lait\n".to_vec();
        let d = decode_utf8("j.yaml", bytes).expect_err("latin-1 byte");
        assert_eq!((d.line, d.column), (2, 12));
        assert!(d.message.contains("0xe9"), "{}", d.message);
        assert_eq!(
            d.source_line.as_deref(),
            Some("prompt: caf\u{fffd} au lait")
        );
    }

    #[test]
    fn whitespace_only_text_is_empty() {
        let d = check_text("j.yaml", " \n\t\n").expect_err("nothing in it");
        assert!(d.message.contains("empty"), "{}", d.message);
    }

    #[test]
    fn oversize_file_is_refused_before_parsing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("big.yaml");
        let size = MAX_JOB_FILE_BYTES + 1;
        std::fs::write(
            &path,
            vec![b'#'; usize::try_from(size).expect("1 MiB fits usize")],
        )
        .expect("write");
        match read_text_file(&path, "big.yaml") {
            Err(ReadFailure::Content(d)) => assert!(d.message.contains("1048577 bytes"), "{d}"),
            other => panic!("expected a size diagnostic, got {other:?}"),
        }
    }
}
