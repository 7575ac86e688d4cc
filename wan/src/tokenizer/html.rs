//! Python's `html.unescape` and the entity table it (and ftfy) read.

use super::ftfy::c1_as_windows_1252;

/// Python's `html.unescape`, with the named references limited to HTML 4.01's 252
/// entities plus `&apos;` (HTML5 has 2231; see the README). Numeric references follow
/// Python exactly (Windows-1252 for 0x80..=0x9F, U+FFFD for 0, surrogates and values
/// past U+10FFFF, nothing for the other invalid code points), and the legacy names
/// without `;` (`&amp`, `&copy2024`) are decoded as a prefix as Python does.
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '&' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let mut j = i + 1;
        if chars.get(j) == Some(&'#') {
            let hex = matches!(chars.get(j + 1), Some('x' | 'X'));
            let digits_start = j + 1 + usize::from(hex);
            let mut k = digits_start;
            while k < chars.len()
                && (if hex {
                    chars[k].is_ascii_hexdigit()
                } else {
                    chars[k].is_ascii_digit()
                })
            {
                k += 1;
            }
            if k == digits_start {
                out.push('&');
                i += 1;
                continue;
            }
            let digits: String = chars[digits_start..k].iter().collect();
            let num = u32::from_str_radix(&digits, if hex { 16 } else { 10 }).unwrap_or(u32::MAX);
            if chars.get(k) == Some(&';') {
                k += 1;
            }
            push_charref(num, &mut out);
            i = k;
            continue;
        }
        while j < chars.len() && j - (i + 1) < 32 && !"\t\n\u{c} <&#;".contains(chars[j]) {
            j += 1;
        }
        if j == i + 1 {
            out.push('&');
            i += 1;
            continue;
        }
        let name: String = chars[i + 1..j].iter().collect();
        let semicolon = chars.get(j) == Some(&';');
        let end = if semicolon { j + 1 } else { j };
        if let Some(v) = semicolon.then(|| named_entity(&name)).flatten() {
            out.push_str(v);
        } else if let Some(v) = (!semicolon).then(|| legacy_entity(&name)).flatten() {
            out.push_str(v);
        } else {
            // The longest legacy name (at least two characters) the reference starts with.
            let s: String = chars[i + 1..end].iter().collect();
            let s_chars: Vec<(usize, char)> = s.char_indices().collect();
            let found = (2..s_chars.len())
                .rev()
                .find_map(|x| legacy_entity(&s[..s_chars[x].0]).map(|v| (v, s_chars[x].0)));
            match found {
                Some((v, at)) => {
                    out.push_str(v);
                    out.push_str(&s[at..]);
                }
                None => {
                    out.push('&');
                    out.push_str(&s);
                }
            }
        }
        i = end;
    }
    out
}

fn push_charref(num: u32, out: &mut String) {
    match num {
        0 => out.push('\u{fffd}'),
        0x0d => out.push('\r'),
        0x80..=0x9f => out.push(c1_as_windows_1252(
            char::from_u32(num).unwrap_or('\u{fffd}'),
        )),
        0xd800..=0xdfff => out.push('\u{fffd}'),
        n if n > 0x10ffff => out.push('\u{fffd}'),
        0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef => {}
        n if n & 0xfffe == 0xfffe => {}
        n => out.push(char::from_u32(n).unwrap_or('\u{fffd}')),
    }
}

/// Named references that HTML5 also accepts without `;`: HTML 4's Latin-1 entities and
/// `amp lt gt quot`, plus six all-caps forms.
fn legacy_entity(name: &str) -> Option<&'static str> {
    match name {
        "AMP" => return Some("&"),
        "COPY" => return Some("\u{a9}"),
        "GT" => return Some(">"),
        "LT" => return Some("<"),
        "QUOT" => return Some("\""),
        "REG" => return Some("\u{ae}"),
        _ => {}
    }
    let v = named_entity(name)?;
    let c = v.chars().next()?;
    (('\u{a0}'..='\u{ff}').contains(&c) || matches!(name, "amp" | "lt" | "gt" | "quot"))
        .then_some(v)
}

pub(super) fn named_entity(name: &str) -> Option<&'static str> {
    ENTITIES
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| ENTITIES[i].1)
}

/// HTML 4.01's named character references and `apos`, with HTML5's values (which differ
/// for `lang` and `rang`), sorted by name.
static ENTITIES: &[(&str, &str)] = &[
    ("AElig", "\u{c6}"),
    ("Aacute", "\u{c1}"),
    ("Acirc", "\u{c2}"),
    ("Agrave", "\u{c0}"),
    ("Alpha", "\u{391}"),
    ("Aring", "\u{c5}"),
    ("Atilde", "\u{c3}"),
    ("Auml", "\u{c4}"),
    ("Beta", "\u{392}"),
    ("Ccedil", "\u{c7}"),
    ("Chi", "\u{3a7}"),
    ("Dagger", "\u{2021}"),
    ("Delta", "\u{394}"),
    ("ETH", "\u{d0}"),
    ("Eacute", "\u{c9}"),
    ("Ecirc", "\u{ca}"),
    ("Egrave", "\u{c8}"),
    ("Epsilon", "\u{395}"),
    ("Eta", "\u{397}"),
    ("Euml", "\u{cb}"),
    ("Gamma", "\u{393}"),
    ("Iacute", "\u{cd}"),
    ("Icirc", "\u{ce}"),
    ("Igrave", "\u{cc}"),
    ("Iota", "\u{399}"),
    ("Iuml", "\u{cf}"),
    ("Kappa", "\u{39a}"),
    ("Lambda", "\u{39b}"),
    ("Mu", "\u{39c}"),
    ("Ntilde", "\u{d1}"),
    ("Nu", "\u{39d}"),
    ("OElig", "\u{152}"),
    ("Oacute", "\u{d3}"),
    ("Ocirc", "\u{d4}"),
    ("Ograve", "\u{d2}"),
    ("Omega", "\u{3a9}"),
    ("Omicron", "\u{39f}"),
    ("Oslash", "\u{d8}"),
    ("Otilde", "\u{d5}"),
    ("Ouml", "\u{d6}"),
    ("Phi", "\u{3a6}"),
    ("Pi", "\u{3a0}"),
    ("Prime", "\u{2033}"),
    ("Psi", "\u{3a8}"),
    ("Rho", "\u{3a1}"),
    ("Scaron", "\u{160}"),
    ("Sigma", "\u{3a3}"),
    ("THORN", "\u{de}"),
    ("Tau", "\u{3a4}"),
    ("Theta", "\u{398}"),
    ("Uacute", "\u{da}"),
    ("Ucirc", "\u{db}"),
    ("Ugrave", "\u{d9}"),
    ("Upsilon", "\u{3a5}"),
    ("Uuml", "\u{dc}"),
    ("Xi", "\u{39e}"),
    ("Yacute", "\u{dd}"),
    ("Yuml", "\u{178}"),
    ("Zeta", "\u{396}"),
    ("aacute", "\u{e1}"),
    ("acirc", "\u{e2}"),
    ("acute", "\u{b4}"),
    ("aelig", "\u{e6}"),
    ("agrave", "\u{e0}"),
    ("alefsym", "\u{2135}"),
    ("alpha", "\u{3b1}"),
    ("amp", "\u{26}"),
    ("and", "\u{2227}"),
    ("ang", "\u{2220}"),
    ("apos", "\u{27}"),
    ("aring", "\u{e5}"),
    ("asymp", "\u{2248}"),
    ("atilde", "\u{e3}"),
    ("auml", "\u{e4}"),
    ("bdquo", "\u{201e}"),
    ("beta", "\u{3b2}"),
    ("brvbar", "\u{a6}"),
    ("bull", "\u{2022}"),
    ("cap", "\u{2229}"),
    ("ccedil", "\u{e7}"),
    ("cedil", "\u{b8}"),
    ("cent", "\u{a2}"),
    ("chi", "\u{3c7}"),
    ("circ", "\u{2c6}"),
    ("clubs", "\u{2663}"),
    ("cong", "\u{2245}"),
    ("copy", "\u{a9}"),
    ("crarr", "\u{21b5}"),
    ("cup", "\u{222a}"),
    ("curren", "\u{a4}"),
    ("dArr", "\u{21d3}"),
    ("dagger", "\u{2020}"),
    ("darr", "\u{2193}"),
    ("deg", "\u{b0}"),
    ("delta", "\u{3b4}"),
    ("diams", "\u{2666}"),
    ("divide", "\u{f7}"),
    ("eacute", "\u{e9}"),
    ("ecirc", "\u{ea}"),
    ("egrave", "\u{e8}"),
    ("empty", "\u{2205}"),
    ("emsp", "\u{2003}"),
    ("ensp", "\u{2002}"),
    ("epsilon", "\u{3b5}"),
    ("equiv", "\u{2261}"),
    ("eta", "\u{3b7}"),
    ("eth", "\u{f0}"),
    ("euml", "\u{eb}"),
    ("euro", "\u{20ac}"),
    ("exist", "\u{2203}"),
    ("fnof", "\u{192}"),
    ("forall", "\u{2200}"),
    ("frac12", "\u{bd}"),
    ("frac14", "\u{bc}"),
    ("frac34", "\u{be}"),
    ("frasl", "\u{2044}"),
    ("gamma", "\u{3b3}"),
    ("ge", "\u{2265}"),
    ("gt", "\u{3e}"),
    ("hArr", "\u{21d4}"),
    ("harr", "\u{2194}"),
    ("hearts", "\u{2665}"),
    ("hellip", "\u{2026}"),
    ("iacute", "\u{ed}"),
    ("icirc", "\u{ee}"),
    ("iexcl", "\u{a1}"),
    ("igrave", "\u{ec}"),
    ("image", "\u{2111}"),
    ("infin", "\u{221e}"),
    ("int", "\u{222b}"),
    ("iota", "\u{3b9}"),
    ("iquest", "\u{bf}"),
    ("isin", "\u{2208}"),
    ("iuml", "\u{ef}"),
    ("kappa", "\u{3ba}"),
    ("lArr", "\u{21d0}"),
    ("lambda", "\u{3bb}"),
    ("lang", "\u{27e8}"),
    ("laquo", "\u{ab}"),
    ("larr", "\u{2190}"),
    ("lceil", "\u{2308}"),
    ("ldquo", "\u{201c}"),
    ("le", "\u{2264}"),
    ("lfloor", "\u{230a}"),
    ("lowast", "\u{2217}"),
    ("loz", "\u{25ca}"),
    ("lrm", "\u{200e}"),
    ("lsaquo", "\u{2039}"),
    ("lsquo", "\u{2018}"),
    ("lt", "\u{3c}"),
    ("macr", "\u{af}"),
    ("mdash", "\u{2014}"),
    ("micro", "\u{b5}"),
    ("middot", "\u{b7}"),
    ("minus", "\u{2212}"),
    ("mu", "\u{3bc}"),
    ("nabla", "\u{2207}"),
    ("nbsp", "\u{a0}"),
    ("ndash", "\u{2013}"),
    ("ne", "\u{2260}"),
    ("ni", "\u{220b}"),
    ("not", "\u{ac}"),
    ("notin", "\u{2209}"),
    ("nsub", "\u{2284}"),
    ("ntilde", "\u{f1}"),
    ("nu", "\u{3bd}"),
    ("oacute", "\u{f3}"),
    ("ocirc", "\u{f4}"),
    ("oelig", "\u{153}"),
    ("ograve", "\u{f2}"),
    ("oline", "\u{203e}"),
    ("omega", "\u{3c9}"),
    ("omicron", "\u{3bf}"),
    ("oplus", "\u{2295}"),
    ("or", "\u{2228}"),
    ("ordf", "\u{aa}"),
    ("ordm", "\u{ba}"),
    ("oslash", "\u{f8}"),
    ("otilde", "\u{f5}"),
    ("otimes", "\u{2297}"),
    ("ouml", "\u{f6}"),
    ("para", "\u{b6}"),
    ("part", "\u{2202}"),
    ("permil", "\u{2030}"),
    ("perp", "\u{22a5}"),
    ("phi", "\u{3c6}"),
    ("pi", "\u{3c0}"),
    ("piv", "\u{3d6}"),
    ("plusmn", "\u{b1}"),
    ("pound", "\u{a3}"),
    ("prime", "\u{2032}"),
    ("prod", "\u{220f}"),
    ("prop", "\u{221d}"),
    ("psi", "\u{3c8}"),
    ("quot", "\u{22}"),
    ("rArr", "\u{21d2}"),
    ("radic", "\u{221a}"),
    ("rang", "\u{27e9}"),
    ("raquo", "\u{bb}"),
    ("rarr", "\u{2192}"),
    ("rceil", "\u{2309}"),
    ("rdquo", "\u{201d}"),
    ("real", "\u{211c}"),
    ("reg", "\u{ae}"),
    ("rfloor", "\u{230b}"),
    ("rho", "\u{3c1}"),
    ("rlm", "\u{200f}"),
    ("rsaquo", "\u{203a}"),
    ("rsquo", "\u{2019}"),
    ("sbquo", "\u{201a}"),
    ("scaron", "\u{161}"),
    ("sdot", "\u{22c5}"),
    ("sect", "\u{a7}"),
    ("shy", "\u{ad}"),
    ("sigma", "\u{3c3}"),
    ("sigmaf", "\u{3c2}"),
    ("sim", "\u{223c}"),
    ("spades", "\u{2660}"),
    ("sub", "\u{2282}"),
    ("sube", "\u{2286}"),
    ("sum", "\u{2211}"),
    ("sup", "\u{2283}"),
    ("sup1", "\u{b9}"),
    ("sup2", "\u{b2}"),
    ("sup3", "\u{b3}"),
    ("supe", "\u{2287}"),
    ("szlig", "\u{df}"),
    ("tau", "\u{3c4}"),
    ("there4", "\u{2234}"),
    ("theta", "\u{3b8}"),
    ("thetasym", "\u{3d1}"),
    ("thinsp", "\u{2009}"),
    ("thorn", "\u{fe}"),
    ("tilde", "\u{2dc}"),
    ("times", "\u{d7}"),
    ("trade", "\u{2122}"),
    ("uArr", "\u{21d1}"),
    ("uacute", "\u{fa}"),
    ("uarr", "\u{2191}"),
    ("ucirc", "\u{fb}"),
    ("ugrave", "\u{f9}"),
    ("uml", "\u{a8}"),
    ("upsih", "\u{3d2}"),
    ("upsilon", "\u{3c5}"),
    ("uuml", "\u{fc}"),
    ("weierp", "\u{2118}"),
    ("xi", "\u{3be}"),
    ("yacute", "\u{fd}"),
    ("yen", "\u{a5}"),
    ("yuml", "\u{ff}"),
    ("zeta", "\u{3b6}"),
    ("zwj", "\u{200d}"),
    ("zwnj", "\u{200c}"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_table_is_sorted_for_binary_search() {
        assert!(ENTITIES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(ENTITIES.len(), 253);
    }

    #[test]
    fn html_unescape_numeric_edges_follow_python() {
        assert_eq!(
            html_unescape("&#0;&#13;&#128;&#x81;&#1;&#xFFFF;&#xD800;&#99999999999;"),
            "\u{fffd}\r\u{20ac}\u{81}\u{fffd}\u{fffd}"
        );
        assert_eq!(html_unescape("&#65&#x42;&#;&#x;"), "AB&#;&#x;");
    }
}
