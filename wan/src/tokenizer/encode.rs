//! The stages a text goes through in [`UmT5Tokenizer::encode_cleaned`]: added tokens,
//! normalizers, pre-tokenizers, then the Unigram model.

use unicode_normalization::UnicodeNormalization;

use super::regex::replace;
use super::{AddedToken, Normalizer, PreTokenizer, Segment, UmT5Tokenizer};

impl UmT5Tokenizer {
    /// The tokenizer alone (no Wan cleaning), as `tokenizer(text, truncation=True,
    /// max_length=max_len, add_special_tokens=True)`: ids of the text truncated to
    /// `max_len` minus the special tokens, then the special tokens. As in transformers,
    /// `max_len == 0` means no truncation. The special tokens are always kept.
    pub fn encode_cleaned(&self, text: &str, max_len: usize) -> Vec<u32> {
        let mut body = Vec::new();
        for segment in self.split_added(text) {
            match segment {
                Segment::Added(id) => body.push(id),
                Segment::Text(part) => {
                    let normalized = self.normalize(part);
                    for piece in self.pre_tokenize(&normalized) {
                        self.unigram(&piece, &mut body);
                    }
                }
            }
        }
        if max_len > 0 {
            let room = max_len.saturating_sub(self.prefix_ids.len() + self.suffix_ids.len());
            body.truncate(room);
        }
        let mut ids =
            Vec::with_capacity(body.len() + self.prefix_ids.len() + self.suffix_ids.len());
        ids.extend_from_slice(&self.prefix_ids);
        ids.extend(body);
        ids.extend_from_slice(&self.suffix_ids);
        ids
    }

    /// Splits the raw text on added tokens, leftmost match first, longest match at a
    /// position; `lstrip` / `rstrip` tokens swallow the whitespace beside them.
    fn split_added<'a>(&self, text: &'a str) -> Vec<Segment<'a>> {
        let mut out = Vec::new();
        let bytes = text.as_bytes();
        let mut done = 0; // end of the last emitted piece
        let mut pos = 0;
        while pos < text.len() {
            let mut best: Option<&AddedToken> = None;
            if self.added_first_bytes.contains(&bytes[pos]) {
                for tok in &self.added {
                    if text[pos..].starts_with(tok.content.as_str())
                        && best.is_none_or(|b| tok.content.len() > b.content.len())
                    {
                        best = Some(tok);
                    }
                }
            }
            let Some(tok) = best else {
                pos += text[pos..].chars().next().map_or(1, char::len_utf8);
                continue;
            };
            let mut start = pos;
            let mut end = pos + tok.content.len();
            if tok.lstrip {
                let before = &text[done..start];
                start = done + before.trim_end_matches(char::is_whitespace).len();
            }
            if tok.rstrip {
                let after = &text[end..];
                end += after.len() - after.trim_start_matches(char::is_whitespace).len();
            }
            if start > done {
                out.push(Segment::Text(&text[done..start]));
            }
            out.push(Segment::Added(tok.id));
            done = end;
            pos = end;
        }
        if done < text.len() {
            out.push(Segment::Text(&text[done..]));
        }
        out
    }

    fn normalize(&self, text: &str) -> String {
        let mut s = text.to_string();
        for n in &self.normalizers {
            s = match n {
                Normalizer::Nfkc => s.nfkc().collect(),
                Normalizer::Nfc => s.nfc().collect(),
                Normalizer::Nfd => s.nfd().collect(),
                Normalizer::Nfkd => s.nfkd().collect(),
                Normalizer::Precompiled(map) => map.normalize(&s),
                Normalizer::Replace { pattern, content } => replace(&s, pattern, content),
                Normalizer::Strip { left, right } => {
                    let mut t = s.as_str();
                    if *left {
                        t = t.trim_start_matches(char::is_whitespace);
                    }
                    if *right {
                        t = t.trim_end_matches(char::is_whitespace);
                    }
                    t.to_string()
                }
                Normalizer::Lowercase => s.to_lowercase(),
            };
        }
        s
    }

    fn pre_tokenize(&self, text: &str) -> Vec<String> {
        let mut pieces = vec![text.to_string()];
        for p in &self.pre_tokenizers {
            let mut next = Vec::new();
            for piece in pieces {
                match p {
                    PreTokenizer::WhitespaceSplit => next.extend(
                        piece
                            .split(char::is_whitespace)
                            .filter(|w| !w.is_empty())
                            .map(str::to_string),
                    ),
                    PreTokenizer::Metaspace {
                        replacement,
                        prepend,
                        split,
                    } => {
                        if piece.is_empty() {
                            continue;
                        }
                        let mut s: String = piece
                            .chars()
                            .map(|c| if c == ' ' { *replacement } else { c })
                            .collect();
                        if *prepend && !s.starts_with(*replacement) {
                            s.insert(0, *replacement);
                        }
                        if *split {
                            // Each replacement character starts a new piece.
                            let mut start = 0;
                            for (i, c) in s.char_indices() {
                                if c == *replacement && i > start {
                                    next.push(s[start..i].to_string());
                                    start = i;
                                }
                            }
                            next.push(s[start..].to_string());
                        } else {
                            next.push(s);
                        }
                    }
                }
            }
            pieces = next;
        }
        pieces.retain(|p| !p.is_empty());
        pieces
    }

    /// Viterbi over one pre-token, as the `tokenizers` library's `Unigram::encode`
    /// (ties keep the earlier candidate), then fused unknowns resolved to ids.
    fn unigram(&self, text: &str, out: &mut Vec<u32>) {
        #[derive(Clone, Copy)]
        struct Node {
            score: f64,
            start: Option<usize>,
            id: u32,
        }
        if text.is_empty() {
            return;
        }
        let n = text.len();
        let mut best = vec![
            Node {
                score: 0.0,
                start: None,
                id: 0
            };
            n + 1
        ];
        let mut pos = 0;
        while pos < n {
            let base = best[pos].score;
            let char_len = text[pos..].chars().next().map_or(1, char::len_utf8);
            let mut has_single = false;
            let mut end = pos;
            for c in text[pos..].chars() {
                end += c.len_utf8();
                if end - pos > self.max_piece_bytes {
                    break;
                }
                if let Some(&id) = self.piece_ids.get(&text[pos..end]) {
                    let score = base + self.scores[id as usize];
                    let node = &mut best[end];
                    if node.start.is_none() || score > node.score {
                        *node = Node {
                            score,
                            start: Some(pos),
                            id,
                        };
                    }
                    if end - pos == char_len {
                        has_single = true;
                    }
                }
            }
            if !has_single {
                let score = base + self.unk_score;
                let node = &mut best[pos + char_len];
                if node.start.is_none() || score > node.score {
                    *node = Node {
                        score,
                        start: Some(pos),
                        id: self.unk_id,
                    };
                }
            }
            pos += char_len;
        }
        // Backtrack; runs of unknowns become one span.
        let mut spans: Vec<(usize, usize, bool)> = Vec::new();
        let mut end = n;
        while end > 0 {
            let node = best[end];
            let start = node.start.unwrap_or(0);
            let is_unk = node.id == self.unk_id;
            match spans.last_mut() {
                Some(last) if is_unk && last.2 => last.0 = start,
                _ => spans.push((start, end, is_unk)),
            }
            end = start;
        }
        for &(start, end, _) in spans.iter().rev() {
            let piece = &text[start..end];
            if let Some(&id) = self.piece_ids.get(piece) {
                out.push(id);
                continue;
            }
            if let Some(byte_ids) = &self.byte_ids {
                let ids: Option<Vec<u32>> = piece.bytes().map(|b| byte_ids[b as usize]).collect();
                if let Some(ids) = ids {
                    out.extend(ids);
                    continue;
                }
            }
            out.push(self.unk_id);
        }
    }
}
