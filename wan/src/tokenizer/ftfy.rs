//! A port of `ftfy.fix_text` (default settings, without the mojibake repair).

use unicode_normalization::UnicodeNormalization;

use super::html::{html_unescape, named_entity};

/// `ftfy.fix_text` with its default settings, minus `fix_encoding` (the mojibake
/// detection and repair, which rests on ftfy's statistical "badness" heuristic and is
/// not ported). Each line is fixed on its own, the steps repeated until nothing
/// changes: HTML entities (only while no line so far contained `<`), C1 controls read
/// as Windows-1252, Latin ligatures, full/half-width forms, curly quotes, line breaks,
/// terminal escapes, control characters, NFC.
pub fn ftfy_fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    for line in text.split_inclusive('\n') {
        if line.contains('<') {
            unescape = false;
        }
        let mut current = line.to_string();
        loop {
            let mut t = current.clone();
            if unescape {
                t = ftfy_unescape_html(&t);
            }
            t = t.chars().map(c1_as_windows_1252).collect();
            t = t.chars().fold(String::with_capacity(t.len()), |mut s, c| {
                match latin_ligature(c) {
                    Some(rep) => s.push_str(rep),
                    None => s.push(c),
                }
                s
            });
            t = fix_character_width(&t);
            t = t
                .chars()
                .map(|c| match c {
                    '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
                    '\u{201c}'..='\u{201f}' => '"',
                    c => c,
                })
                .collect();
            t = t
                .replace("\r\n", "\n")
                .chars()
                .map(|c| match c {
                    '\r' | '\u{2028}' | '\u{2029}' | '\u{85}' => '\n',
                    c => c,
                })
                .collect();
            t = remove_terminal_escapes(&t);
            t.retain(|c| !ftfy_control_char(c));
            t = t.nfc().collect();
            if t == current {
                break;
            }
            current = t;
        }
        out.push_str(&current);
    }
    out
}

/// Windows-1252 for the bytes 0x80..=0x9F (the five bytes it leaves undefined stay as
/// they are): ftfy's `fix_c1_controls` and `html.unescape`'s table for `&#128;` etc.
pub(super) fn c1_as_windows_1252(c: char) -> char {
    const TABLE: [char; 32] = [
        '\u{20ac}', '\u{81}', '\u{201a}', '\u{192}', '\u{201e}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2c6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8d}', '\u{17d}',
        '\u{8f}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201c}', '\u{201d}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2dc}', '\u{2122}', '\u{161}', '\u{203a}', '\u{153}', '\u{9d}', '\u{17e}',
        '\u{178}',
    ];
    match c as u32 {
        v @ 0x80..=0x9f => TABLE[(v - 0x80) as usize],
        _ => c,
    }
}

fn latin_ligature(c: char) -> Option<&'static str> {
    Some(match c {
        '\u{132}' => "IJ",
        '\u{133}' => "ij",
        '\u{149}' => "\u{2bc}n",
        '\u{1f1}' => "DZ",
        '\u{1f2}' => "Dz",
        '\u{1f3}' => "dz",
        '\u{1c4}' => "D\u{17d}",
        '\u{1c5}' => "D\u{17e}",
        '\u{1c6}' => "d\u{17e}",
        '\u{1c7}' => "LJ",
        '\u{1c8}' => "Lj",
        '\u{1c9}' => "lj",
        '\u{1ca}' => "NJ",
        '\u{1cb}' => "Nj",
        '\u{1cc}' => "nj",
        '\u{fb00}' => "ff",
        '\u{fb01}' => "fi",
        '\u{fb02}' => "fl",
        '\u{fb03}' => "ffi",
        '\u{fb04}' => "ffl",
        '\u{fb05}' => "\u{17f}t",
        '\u{fb06}' => "st",
        _ => return None,
    })
}

/// ftfy's `fix_character_width`: U+3000 to a space, U+FF01..=U+FFEF to their NFKC form.
fn fix_character_width(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{3000}' => out.push(' '),
            '\u{ff01}'..='\u{ffef}' => out.extend(std::iter::once(c).nfkc()),
            c => out.push(c),
        }
    }
    out
}

/// Removes `ESC [ (digits or ;)* letter`.
fn remove_terminal_escapes(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '\u{1b}' && chars.get(i + 1) == Some(&'[') {
            let mut j = i + 2;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == ';') {
                j += 1;
            }
            if j < chars.len() && chars[j].is_ascii_alphabetic() {
                i = j + 1;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

fn ftfy_control_char(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{8}'
            | '\u{b}'
            | '\u{e}'..='\u{1f}'
            | '\u{7f}'
            | '\u{206a}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffc}'
    )
}

/// ftfy's own entity pass: `&#?[0-9A-Za-z]{1,24};` replaced when it names a known
/// entity (or the all-caps form of a lower-case one) or is a complete numeric reference.
fn ftfy_unescape_html(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'&' {
            i += 1;
            continue;
        }
        let hash = b.get(i + 1) == Some(&b'#');
        let name_start = i + 1 + usize::from(hash);
        let mut j = name_start;
        while j < b.len() && j - name_start < 24 && b[j].is_ascii_alphanumeric() {
            j += 1;
        }
        if j == name_start || b.get(j) != Some(&b';') {
            i += 1;
            continue;
        }
        let whole = &text[i..=j];
        let replacement = if hash {
            let u = html_unescape(whole);
            if u.contains(';') {
                None
            } else {
                Some(u)
            }
        } else {
            let name = &text[name_start..j];
            named_entity(name).map(str::to_string).or_else(|| {
                let lower = name.to_ascii_lowercase();
                (lower.to_ascii_uppercase() == name && lower != name)
                    .then(|| named_entity(&lower).map(str::to_uppercase))
                    .flatten()
            })
        };
        if let Some(r) = replacement {
            out.push_str(&text[done..i]);
            out.push_str(&r);
            done = j + 1;
        }
        i = j + 1;
    }
    out.push_str(&text[done..]);
    out
}
