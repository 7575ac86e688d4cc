//! Finding where a key or a value sits in YAML text.
//!
//! Checks that run after deserialization (a path outside the allowed roots, a size that is not
//! a multiple of 16) still have to point at a line. Rather than a second, hand-written YAML
//! scanner that would drift from the real grammar (flow mappings, quoting, comments, block
//! scalars), this asks serde_yaml itself: a probe walks the document down the key path and,
//! when it reaches the target, fails on purpose. serde_yaml stamps every failure with the
//! position of the event being read, so the deliberate failure carries exactly the position we
//! want, in the same line/column convention as every other YAML error.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::cell::Cell;
use std::fmt;

/// The 1-based (line, column) of the key at the end of `key_path`, e.g.
/// `["render", "infer_frames"]`. A segment that is a number selects an element of a list,
/// whose position is then that of the element. `None` when the path is absent; in text with
/// a syntax error, only keys before the error can be found.
pub fn locate_key(text: &str, key_path: &[&str]) -> Option<(usize, usize)> {
    locate(text, key_path, Target::Key)
}

/// Like [`locate_key`], but the position of the value after the key: where a caret belongs
/// when the value is what is wrong.
pub fn locate_value(text: &str, key_path: &[&str]) -> Option<(usize, usize)> {
    locate(text, key_path, Target::Value)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    Key,
    Value,
}

fn locate(text: &str, key_path: &[&str], target: Target) -> Option<(usize, usize)> {
    if key_path.is_empty() {
        return None;
    }
    let found = Cell::new(false);
    let probe = Probe {
        path: key_path,
        target,
        found: &found,
    };
    match probe.deserialize(serde_yaml::Deserializer::from_str(text)) {
        Err(err) if found.get() => err.location().map(|l| (l.line(), l.column())),
        _ => None,
    }
}

/// The deliberate failure; its text is never shown.
fn arrived<E: de::Error>(found: &Cell<bool>) -> E {
    found.set(true);
    E::custom("located")
}

/// Walks one level of the path.
struct Probe<'p> {
    path: &'p [&'p str],
    target: Target,
    found: &'p Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (head, rest) = match self.path.split_first() {
            Some(split) => split,
            None => return drain_map(map),
        };
        let last = rest.is_empty();
        loop {
            let key = KeyProbe {
                wanted: head,
                fail_here: last && self.target == Target::Key,
                found: self.found,
            };
            match map.next_key_seed(key)? {
                None => return Ok(()),
                Some(true) if last => {
                    map.next_value_seed(Arrive { found: self.found })?;
                }
                Some(true) => map.next_value_seed(Probe {
                    path: rest,
                    target: self.target,
                    found: self.found,
                })?,
                Some(false) => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let wanted = self.path.first().and_then(|s| s.parse::<usize>().ok());
        let rest = self.path.get(1..).unwrap_or_default();
        let mut index = 0usize;
        loop {
            let hit = wanted == Some(index);
            let more = if hit && rest.is_empty() {
                seq.next_element_seed(Arrive { found: self.found })?
            } else if hit {
                seq.next_element_seed(Probe {
                    path: rest,
                    target: self.target,
                    found: self.found,
                })?
            } else {
                seq.next_element::<IgnoredAny>()?.map(|_| ())
            };
            if more.is_none() {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        IgnoredAny.visit_enum(data).map(|_| ())
    }
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Reads one mapping key; true when it is the wanted one. Fails on purpose when the key
/// itself is the target, so the failure carries the key's position.
struct KeyProbe<'p> {
    wanted: &'p str,
    fail_here: bool,
    found: &'p Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for KeyProbe<'_> {
    type Value = bool;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl KeyProbe<'_> {
    fn compare<E: de::Error>(&self, key: &str) -> Result<bool, E> {
        match (key == self.wanted, self.fail_here) {
            (true, true) => Err(arrived(self.found)),
            (matched, _) => Ok(matched),
        }
    }
}

impl<'de> Visitor<'de> for KeyProbe<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a mapping key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        self.compare(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
        self.compare(&v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
        self.compare(&v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
        self.compare(&v.to_string())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<bool, A::Error> {
        drain_map(map).map(|_| false)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| false)
    }
}

/// Fails on whatever value comes next, so the failure carries that value's position.
struct Arrive<'p> {
    found: &'p Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Arrive<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Arrive<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(arrived(self.found))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(arrived(self.found))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(arrived(self.found))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(arrived(self.found))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(arrived(self.found))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(arrived(self.found))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(arrived(self.found))
    }
    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(arrived(self.found))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(arrived(self.found))
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(arrived(self.found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
name: job   # a comment with render: in it
render:
  size: 688*368
  infer_frames: 300
notify:
  email: [a@example.com, b@example.com]
  webhook:
    - url: http://127.0.0.1/x
retry: { max_attempts: 0 }
";

    #[test]
    fn finds_nested_block_key_and_value() {
        assert_eq!(locate_key(TEXT, &["render", "infer_frames"]), Some((4, 3)));
        assert_eq!(
            locate_value(TEXT, &["render", "infer_frames"]),
            Some((4, 17))
        );
    }

    #[test]
    fn finds_keys_inside_flow_mappings() {
        assert_eq!(
            locate_value(TEXT, &["retry", "max_attempts"]),
            Some((9, 24))
        );
    }

    #[test]
    fn finds_list_elements_by_index() {
        assert_eq!(locate_value(TEXT, &["notify", "email", "1"]), Some((6, 26)));
        assert_eq!(
            locate_value(TEXT, &["notify", "webhook", "0", "url"]),
            Some((8, 12))
        );
    }

    #[test]
    fn ignores_words_in_comments() {
        assert_eq!(locate_key(TEXT, &["render"]), Some((2, 1)));
    }

    #[test]
    fn absent_key_or_broken_text_gives_none() {
        assert_eq!(locate_key(TEXT, &["render", "seed"]), None);
        assert_eq!(locate_key("a: [1,\n", &["b"]), None);
        assert_eq!(locate_key(TEXT, &[]), None);
    }
}
