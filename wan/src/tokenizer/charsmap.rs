//! sentencepiece's precompiled normalization map, as `tokenizer.json` stores it (base64).

use unicode_segmentation::UnicodeSegmentation;

/// sentencepiece's precompiled normalization map: a darts-clone double-array trie over
/// the UTF-8 of the source strings, whose values index NUL-terminated replacements.
#[derive(Debug)]
pub(super) struct Charsmap {
    units: Vec<u32>,
    replacements: String,
}

impl Charsmap {
    /// Layout: u32 LE byte length of the trie, the trie's u32 LE units, the replacements.
    pub(super) fn parse(blob: &[u8]) -> Result<Self, String> {
        let size = blob
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or("charsmap shorter than its header")?;
        let trie = blob
            .get(4..4 + size)
            .filter(|t| t.len() & 3 == 0 && !t.is_empty())
            .ok_or("charsmap trie size does not fit the data")?;
        let units = trie
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let replacements = String::from_utf8(blob[4 + size..].to_vec())
            .map_err(|_| "charsmap replacements are not UTF-8")?;
        Ok(Self {
            units,
            replacements,
        })
    }

    /// The replacement of the shortest key that is a prefix of `chunk` (what the
    /// `spm_precompiled` crate the `tokenizers` library uses returns).
    fn transform(&self, chunk: &str) -> Option<&str> {
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let mut pos = 0usize;
        pos ^= offset(*self.units.first()?);
        for &c in chunk.as_bytes() {
            if c == 0 {
                break;
            }
            pos ^= c as usize;
            let unit = *self.units.get(pos)?;
            if unit & ((1 << 31) | 0xff) != c as u32 {
                return None;
            }
            pos ^= offset(unit);
            if (unit >> 8) & 1 == 1 {
                let value = (*self.units.get(pos)? & ((1 << 31) - 1)) as usize;
                let rest = self.replacements.get(value..)?;
                return Some(rest.split('\0').next().unwrap_or(""));
            }
        }
        None
    }

    /// The `tokenizers` library's `Precompiled` normalizer: a grapheme cluster shorter
    /// than 6 bytes is replaced whole when a prefix of it is a key, otherwise each
    /// character is looked up on its own.
    pub(super) fn normalize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        for grapheme in text.graphemes(true) {
            if grapheme.len() < 6 {
                if let Some(rep) = self.transform(grapheme) {
                    out.push_str(rep);
                    continue;
                }
            }
            for (i, c) in grapheme.char_indices() {
                match self.transform(&grapheme[i..i + c.len_utf8()]) {
                    Some(rep) => out.push_str(rep),
                    None => out.push(c),
                }
            }
        }
        out
    }
}
