//! The regexes `tokenizer.json` files use in `Replace` normalizers: a tiny subset, parsed
//! and run here, everything else refused.

#[derive(Debug, Clone)]
pub(super) enum Pattern {
    Literal(String),
    /// One character class repeated `min..=max` times (greedy, leftmost).
    Run {
        class: CharClass,
        min: usize,
        max: Option<usize>,
    },
}

#[derive(Debug, Clone)]
pub(super) struct CharClass {
    negated: bool,
    ranges: Vec<(char, char)>,
    whitespace: bool,
}

impl CharClass {
    fn matches(&self, c: char) -> bool {
        let hit = (self.whitespace && c.is_whitespace())
            || self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
        hit != self.negated
    }
}

/// The regexes tokenizer.json files use in `Replace` normalizers are tiny (umT5's is
/// `" {2,}"`): one literal character, escape or `[...]` class with an optional `+` or
/// `{n}` / `{n,}` / `{n,m}`. Anything else is refused rather than guessed.
pub(super) fn parse_regex(re: &str) -> Result<Pattern, String> {
    let chars: Vec<char> = re.chars().collect();
    let mut i;
    let escape = |c: char| -> Result<CharClass, String> {
        let single = |c: char| CharClass {
            negated: false,
            ranges: vec![(c, c)],
            whitespace: false,
        };
        Ok(match c {
            's' => CharClass {
                negated: false,
                ranges: Vec::new(),
                whitespace: true,
            },
            't' => single('\t'),
            'n' => single('\n'),
            'r' => single('\r'),
            'f' => single('\u{c}'),
            c if !c.is_ascii_alphanumeric() => single(c),
            c => return Err(format!("escape `\\{c}` is not supported")),
        })
    };
    let class = match chars.first() {
        None => return Err("empty".into()),
        Some('\\') => {
            i = 2;
            escape(*chars.get(1).ok_or("ends with a backslash")?)?
        }
        Some('[') => {
            let mut cls = CharClass {
                negated: false,
                ranges: Vec::new(),
                whitespace: false,
            };
            i = 1;
            if chars.get(i) == Some(&'^') {
                cls.negated = true;
                i += 1;
            }
            let mut first = true;
            loop {
                let c = *chars.get(i).ok_or("unclosed `[`")?;
                if c == ']' && !first {
                    i += 1;
                    break;
                }
                first = false;
                let lo = if c == '\\' {
                    i += 1;
                    let e = escape(*chars.get(i).ok_or("unclosed `[`")?)?;
                    if e.whitespace {
                        cls.whitespace = true;
                        i += 1;
                        continue;
                    }
                    e.ranges[0].0
                } else {
                    c
                };
                i += 1;
                if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&c| c != ']') {
                    let hi = chars[i + 1];
                    if hi == '\\' {
                        return Err("escaped range ends are not supported".into());
                    }
                    cls.ranges.push((lo, hi));
                    i += 2;
                } else {
                    cls.ranges.push((lo, lo));
                }
            }
            cls
        }
        Some(&c) if "()|.*+?{}^$".contains(c) => {
            return Err(format!("`{c}` at the start is not supported"))
        }
        Some(&c) => {
            i = 1;
            CharClass {
                negated: false,
                ranges: vec![(c, c)],
                whitespace: false,
            }
        }
    };
    let rest: String = chars[i..].iter().collect();
    let (min, max) = match rest.as_str() {
        "" => (1, Some(1)),
        "+" => (1, None),
        q if q.starts_with('{') && q.ends_with('}') => {
            let inner = &q[1..q.len() - 1];
            let num = |s: &str| {
                s.parse::<usize>()
                    .map_err(|_| format!("bad count in `{q}`"))
            };
            match inner.split_once(',') {
                None => {
                    let n = num(inner)?;
                    (n, Some(n))
                }
                Some((a, "")) => (num(a)?, None),
                Some((a, b)) => (num(a)?, Some(num(b)?)),
            }
        }
        q => return Err(format!("`{q}` after the first atom is not supported")),
    };
    if min == 0 || max.is_some_and(|m| m < min) {
        return Err("repeat counts must be at least 1 and ordered".into());
    }
    // A plain character without quantifier is a literal.
    if min == 1 && max == Some(1) && !class.negated && !class.whitespace && class.ranges.len() == 1
    {
        let (lo, hi) = class.ranges[0];
        if lo == hi {
            return Ok(Pattern::Literal(lo.to_string()));
        }
    }
    Ok(Pattern::Run { class, min, max })
}

pub(super) fn replace(text: &str, pattern: &Pattern, content: &str) -> String {
    match pattern {
        Pattern::Literal(p) => text.replace(p.as_str(), content),
        Pattern::Run { class, min, max } => {
            let mut out = String::with_capacity(text.len());
            let mut run: Vec<char> = Vec::new();
            let flush = |run: &mut Vec<char>, out: &mut String| {
                let mut rest = &run[..];
                while rest.len() >= *min {
                    let take = max.map_or(rest.len(), |m| m.min(rest.len()));
                    out.push_str(content);
                    rest = &rest[take..];
                }
                out.extend(rest.iter());
                run.clear();
            };
            for c in text.chars() {
                if class.matches(c) {
                    run.push(c);
                } else {
                    flush(&mut run, &mut out);
                    out.push(c);
                }
            }
            flush(&mut run, &mut out);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_subset_parses_what_tokenizer_files_use() {
        let Pattern::Run { min, max, .. } = parse_regex(" {2,}").unwrap() else {
            panic!("` {{2,}}` is a run");
        };
        assert_eq!((min, max), (2, None));
        assert_eq!(
            replace("a  b     c d", &parse_regex(" {2,}").unwrap(), "_"),
            "a_b_c d"
        );
        assert_eq!(
            replace("a\t\n b", &parse_regex("\\s+").unwrap(), " "),
            "a b"
        );
        assert_eq!(replace("aaaaa", &parse_regex("a{2}").unwrap(), "x"), "xxa");
        assert_eq!(
            replace("x1-2y", &parse_regex("[0-9-]+").unwrap(), "#"),
            "x#y"
        );
        for refused in ["(a)", "a|b", "a*", ".", "ab+", "\\d"] {
            assert!(parse_regex(refused).is_err(), "{refused} must be refused");
        }
    }
}
