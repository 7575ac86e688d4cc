//! The structural pass: unknown keys, duplicate keys, the shape of the top level, and alias
//! expansion, all reported with exact positions before serde turns the text into structs.
//!
//! serde's derived code reports a duplicate field at the start of its mapping and stops at the
//! first unknown field. This pass walks the document against the key lists of
//! [`crate::file`] instead, failing on purpose at each problem key so serde_yaml stamps the
//! failure with that key's position (the same trick as [`crate::locate`]). To report several
//! problems it walks again, skipping the ones already reported, up to [`MAX_REPORTED`].
//!
//! Alias bombs: YAML anchors (`&a`) and aliases (`*a`) let a few lines stand for millions of
//! values. serde_yaml caps the repetition, but far above what a job file needs. This pass
//! counts every value it visits (text values by their length) and stops once the total exceeds
//! twice the file's own size. A file without aliases can never get there, since every value
//! and every character of text is written out at least once; a file that uses aliases only
//! trivially stays under it; anything that multiplies itself is rejected.

use crate::diag::{self, Diagnostic};
use crate::file::{Key, Shape};
use crate::rules::closest;
use crate::source::Source;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::fmt;

/// The most structural problems reported for one file; past that, more messages only bury
/// the first ones.
pub(crate) const MAX_REPORTED: usize = 20;

/// Above this size a file gets at most three structural reports.
const BIG_FILE_BYTES: usize = 64 * 1024;

#[derive(Debug)]
enum Finding {
    UnknownKey {
        section: String,
        key: String,
        valid: &'static [Key],
    },
    DuplicateKey {
        path: String,
    },
    NotMapping {
        found: &'static str,
    },
    NoKeys,
    Tagged {
        path: String,
    },
    Expansion,
}

impl Finding {
    /// Problems with one key; the walk can go on past them.
    fn is_local(&self) -> bool {
        matches!(
            self,
            Finding::UnknownKey { .. } | Finding::DuplicateKey { .. }
        )
    }
}

/// Checks the structure of `src` against the allowed `keys`. Empty when all is well; a YAML
/// syntax error is reported here too, since it is the first thing a walk meets.
pub(crate) fn check_structure(src: &Source, keys: &'static [Key], what: &str) -> Vec<Diagnostic> {
    let mut skip = HashSet::new();
    let mut out = Vec::new();
    let budget = src
        .text
        .chars()
        .count()
        .saturating_mul(2)
        .saturating_add(64);
    // Every walk parses the whole text again; on big files settle for the first few problems.
    let walks = if src.text.len() > BIG_FILE_BYTES {
        3
    } else {
        MAX_REPORTED
    };
    while out.len() < walks {
        let walker = Walker {
            skip: &skip,
            ordinal: Cell::new(0),
            budget: Cell::new(budget),
            finding: RefCell::new(None),
        };
        let root = Node {
            walker: &walker,
            shape: &Shape::Leaf,
            keys: Some(keys),
            path: String::new(),
        };
        let err = match root.deserialize(serde_yaml::Deserializer::from_str(src.text)) {
            Ok(()) => break,
            Err(err) => err,
        };
        let position = err.location().map(|l| (l.line(), l.column()));
        match walker.finding.into_inner() {
            Some((ordinal, finding)) => {
                let local = finding.is_local();
                out.push(describe(src, finding, position, what));
                if !local {
                    break;
                }
                skip.insert(ordinal);
            }
            None => {
                out.push(yaml_failure(src, &err, what));
                break;
            }
        }
    }
    out
}

fn describe(
    src: &Source,
    finding: Finding,
    position: Option<(usize, usize)>,
    what: &str,
) -> Diagnostic {
    let (message, hint) = match finding {
        Finding::UnknownKey {
            section,
            key,
            valid,
        } => {
            let names: Vec<&str> = valid.iter().map(|k| k.name).collect();
            let place = if section.is_empty() {
                format!("at the top of the {what}")
            } else {
                format!("in `{section}`")
            };
            let listed = names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let hint = match closest(&key, &names) {
                Some(best) => format!("did you mean `{best}`? valid keys here: {listed}"),
                None => format!("valid keys here: {listed}"),
            };
            (format!("unknown key `{key}` {place}"), hint)
        }
        Finding::DuplicateKey { path } => (
            format!("key `{path}` appears twice"),
            "keep one of them; YAML would silently use only the last".to_string(),
        ),
        Finding::NotMapping { found } => (
            format!("a {what} must be a mapping of `key: value` lines, found {found}"),
            "start with keys such as `inputs:`, `render:` and `output:`".to_string(),
        ),
        Finding::NoKeys => (
            format!("the {what} has no keys"),
            "a job needs at least `inputs:` (image, audio, prompt) and `output: {path: ...}`"
                .to_string(),
        ),
        Finding::Tagged { path } => (
            format!("YAML tags (`!name`) are not used in a {what}, found one at `{path}`"),
            "remove the tag; quote the value if it should start with `!`".to_string(),
        ),
        Finding::Expansion => (
            format!("anchors and aliases expand this {what} to more than twice its size"),
            "write the values out instead of using `&anchor` and `*alias`".to_string(),
        ),
    };
    src.at(position, message, Some(hint))
}

/// A failure the walk did not cause on purpose: bad YAML syntax, several documents, nothing
/// at all.
fn yaml_failure(src: &Source, err: &serde_yaml::Error, what: &str) -> Diagnostic {
    let message = err.to_string();
    if message.contains("more than one document") {
        return src.at(
            second_document_line(src.text).map(|line| (line, 1)),
            format!("a {what} holds one YAML document, this file has several"),
            Some("remove the `---` line and everything after it, or split the jobs into separate files".to_string()),
        );
    }
    if message.contains("EOF while parsing") {
        return describe(src, Finding::NoKeys, None, what);
    }
    let hint = if err
        .location()
        .is_some_and(|l| line_has_tab(src.text, l.line()))
    {
        "indent with spaces; YAML does not allow tabs for indentation"
    } else {
        "check the indentation and that each `key:` is followed by a space; quote values that contain `: ` or ` #`, or start with `*`, `&`, `!`, `@` or a quote"
    };
    diag::from_yaml_error(src.name, src.text, err, Some(hint.to_string()))
}

fn line_has_tab(text: &str, line: usize) -> bool {
    line.checked_sub(1)
        .and_then(|i| text.lines().nth(i))
        .is_some_and(|l| l.contains('\t'))
}

/// The line of the `---` that starts a second document (the first may open with one).
fn second_document_line(text: &str) -> Option<usize> {
    let mut content_seen = false;
    for (index, line) in text.lines().enumerate() {
        let marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if marker && content_seen {
            return Some(index + 1);
        }
        let trimmed = line.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') {
            content_seen = true;
        }
    }
    None
}

struct Walker<'w> {
    skip: &'w HashSet<usize>,
    /// Counts keys in walk order, which is the same on every walk of the same text.
    ordinal: Cell<usize>,
    /// What is left of the expansion allowance.
    budget: Cell<usize>,
    finding: RefCell<Option<(usize, Finding)>>,
}

impl Walker<'_> {
    fn report<E: de::Error>(&self, ordinal: usize, finding: Finding) -> E {
        *self.finding.borrow_mut() = Some((ordinal, finding));
        E::custom("structure problem")
    }

    fn charge<E: de::Error>(&self, cost: usize) -> Result<(), E> {
        match self.budget.get().checked_sub(cost) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => Err(self.report(usize::MAX, Finding::Expansion)),
        }
    }
}

/// One value of the document and the shape it should have. `keys` is set only for the root,
/// which must be a mapping.
struct Node<'w> {
    walker: &'w Walker<'w>,
    shape: &'static Shape,
    keys: Option<&'static [Key]>,
    path: String,
}

impl Node<'_> {
    fn child(&self, shape: &'static Shape, segment: &str) -> Self {
        let path = match (self.path.is_empty(), segment.starts_with('[')) {
            (true, _) | (false, true) => format!("{}{segment}", self.path),
            (false, false) => format!("{}.{segment}", self.path),
        };
        Node {
            walker: self.walker,
            shape,
            keys: None,
            path,
        }
    }

    fn scalar<E: de::Error>(&self, cost: usize) -> Result<(), E> {
        if self.keys.is_some() {
            return Err(self.walker.report(
                usize::MAX,
                Finding::NotMapping {
                    found: "a single value",
                },
            ));
        }
        self.walker.charge(cost)
    }
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.walker.charge(1)?;
        let keys = match (self.keys, self.shape) {
            (Some(keys), _) => Some(keys),
            (None, Shape::Map(keys)) => Some(*keys),
            _ => None,
        };
        let mut seen: Vec<String> = Vec::new();
        loop {
            let found = match keys {
                Some(keys) => map.next_key_seed(KeySeed {
                    node: &self,
                    keys,
                    seen: &mut seen,
                })?,
                None => map
                    .next_key_seed(self.child(&Shape::Leaf, "?"))?
                    .map(|()| None),
            };
            match found {
                None => return Ok(()),
                Some(Some(key)) => map.next_value_seed(self.child(&key.shape, key.name))?,
                Some(None) => map.next_value_seed(self.child(&Shape::Leaf, "?"))?,
            }
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if self.keys.is_some() {
            return Err(self
                .walker
                .report(usize::MAX, Finding::NotMapping { found: "a list" }));
        }
        self.walker.charge(1)?;
        let item = match self.shape {
            Shape::List(item) => item,
            _ => &Shape::Leaf,
        };
        let mut index = 0usize;
        while seq
            .next_element_seed(self.child(item, &format!("[{index}]")))?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        let path = if self.path.is_empty() {
            "the top level".to_string()
        } else {
            self.path.clone()
        };
        Err(self.walker.report(usize::MAX, Finding::Tagged { path }))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(1 + v.chars().count())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar(1)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar(1)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar(1)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar(1)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        if self.keys.is_some() {
            return Err(self.walker.report(usize::MAX, Finding::NoKeys));
        }
        self.walker.charge(1)
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }
}

/// Reads one key of a mapping with known keys; `Some(key)` for a known key, `None` for an
/// unknown one that was already reported on an earlier walk.
struct KeySeed<'n, 'w> {
    node: &'n Node<'w>,
    keys: &'static [Key],
    seen: &'n mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_, '_> {
    type Value = Option<&'static Key>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl KeySeed<'_, '_> {
    fn check<E: de::Error>(self, name: &str) -> Result<Option<&'static Key>, E> {
        let walker = self.node.walker;
        walker.charge(1 + name.chars().count())?;
        let ordinal = walker.ordinal.get();
        walker.ordinal.set(ordinal + 1);
        let skipped = walker.skip.contains(&ordinal);
        let Some(key) = self.keys.iter().find(|k| k.name == name) else {
            if skipped {
                return Ok(None);
            }
            return Err(walker.report(
                ordinal,
                Finding::UnknownKey {
                    section: self.node.path.clone(),
                    key: name.to_string(),
                    valid: self.keys,
                },
            ));
        };
        if self.seen.iter().any(|s| s == name) {
            if skipped {
                return Ok(Some(key));
            }
            let path = self.node.child(&Shape::Leaf, name).path;
            return Err(walker.report(ordinal, Finding::DuplicateKey { path }));
        }
        self.seen.push(name.to_string());
        Ok(Some(key))
    }
}

impl<'de> Visitor<'de> for KeySeed<'_, '_> {
    type Value = Option<&'static Key>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.check(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        self.check(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        self.check(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        self.check(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        self.check(&v.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.check("~")
    }
    // A mapping or list used as a key is never valid here; report it before reading it.
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let verdict = self.check("{...}")?;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(verdict)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let verdict = self.check("[...]")?;
        IgnoredAny.visit_seq(seq)?;
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests;
