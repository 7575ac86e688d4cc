//! Wan's prompt cleaning: `whitespace_clean(basic_clean(text))`.

use super::ftfy::ftfy_fix_text;
use super::html::html_unescape;

/// Python's `str.isspace()` (what `str.strip()` strips).
fn py_isspace(c: char) -> bool {
    py_regex_space(c) || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// What `\s` matches in the `regex` package for a `str` pattern.
fn py_regex_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Wan's `HuggingfaceTokenizer._clean` with `clean='whitespace'`:
/// `whitespace_clean(basic_clean(text))`, i.e. [`ftfy_fix_text`], `html.unescape`
/// twice ([`html_unescape`]), strip, runs of whitespace to one space, strip.
pub fn clean_prompt(text: &str) -> String {
    let fixed = ftfy_fix_text(text);
    let unescaped = html_unescape(&html_unescape(&fixed));
    let stripped = unescaped.trim_matches(py_isspace);
    let mut out = String::with_capacity(stripped.len());
    let mut in_space = false;
    for c in stripped.chars() {
        if py_regex_space(c) {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out.trim_matches(py_isspace).to_string()
}
