//! The umT5 tokenizer, native: prompt text to the token ids `T5EncoderModel` reads.
//!
//! Wan reads `google/umt5-xxl/tokenizer.json` (a Hugging Face "fast" tokenizer) through
//! `wan.modules.tokenizers.HuggingfaceTokenizer(clean='whitespace', seq_len=512)` and keeps
//! the unpadded ids (`ids[:mask.sum()]`). [`UmT5Tokenizer::encode`] returns those ids:
//!
//! 1. Wan's cleaning ([`clean_prompt`]): the deterministic fixers of `ftfy.fix_text`
//!    (not its mojibake repair), `html.unescape` twice, whitespace collapsed and stripped.
//! 2. Added tokens (`<pad>`, `</s>`, `<unk>`, ...) matched in the raw text, longest first.
//! 3. The normalizer of the json (`Precompiled`: sentencepiece's charsmap, decoded;
//!    NFKC / NFC / NFD / NFKD, `Replace`, `Strip`, `Lowercase`, `Sequence`).
//! 4. The pre-tokenizer (`WhitespaceSplit`, `Metaspace`, `Sequence`).
//! 5. The Unigram model: Viterbi over the pieces' log probabilities, consecutive unknown
//!    characters fused into one `<unk>` (or their UTF-8 bytes with `byte_fallback`).
//! 6. Truncation to `max_len` keeping room for the post-processor's special tokens
//!    (`$A </s>` for umT5), which are then added. No padding.
//!
//! What is verified against the Python stack and where this differs from it is listed in
//! `wan/README.md` ("The umT5 tokenizer").

use crate::error::WanError;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

/// Where the Wan release keeps the tokenizer, relative to the model directory.
pub const TOKENIZER_SUBDIR: &str = "google/umt5-xxl";
/// Wan's `text_len`: the encoder sees at most this many tokens, `</s>` included.
pub const TEXT_LEN: usize = 512;

/// sentencepiece's score penalty for an unknown character (`kUnkPenalty`).
const UNK_PENALTY: f64 = 10.0;

/// A Unigram tokenizer read from a Hugging Face `tokenizer.json`, with Wan's prompt
/// cleaning in front.
#[derive(Debug, Clone)]
pub struct UmT5Tokenizer {
    path: PathBuf,
    scores: Vec<f64>,
    piece_ids: HashMap<String, u32>,
    max_piece_bytes: usize,
    unk_id: u32,
    unk_score: f64,
    byte_ids: Option<Vec<Option<u32>>>,
    added: Vec<AddedToken>,
    added_first_bytes: HashSet<u8>,
    normalizers: Vec<Normalizer>,
    pre_tokenizers: Vec<PreTokenizer>,
    prefix_ids: Vec<u32>,
    suffix_ids: Vec<u32>,
    eos_id: u32,
    pad_id: u32,
}

#[derive(Debug, Clone)]
struct AddedToken {
    content: String,
    id: u32,
    lstrip: bool,
    rstrip: bool,
}

#[derive(Debug, Clone)]
enum Normalizer {
    Nfkc,
    Nfc,
    Nfd,
    Nfkd,
    /// sentencepiece's precompiled charsmap (umT5: `nmt_nfkc`).
    Precompiled(Arc<Charsmap>),
    Replace {
        pattern: Pattern,
        content: String,
    },
    Strip {
        left: bool,
        right: bool,
    },
    Lowercase,
}

#[derive(Debug, Clone)]
enum Pattern {
    Literal(String),
    /// One character class repeated `min..=max` times (greedy, leftmost).
    Run {
        class: CharClass,
        min: usize,
        max: Option<usize>,
    },
}

#[derive(Debug, Clone)]
struct CharClass {
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

#[derive(Debug, Clone)]
enum PreTokenizer {
    WhitespaceSplit,
    Metaspace {
        replacement: char,
        prepend: bool,
        split: bool,
    },
}

enum Segment<'a> {
    Text(&'a str),
    Added(u32),
}

fn bad(path: &Path, message: impl Into<String>) -> WanError {
    WanError::BadTokenizer {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn get_bool(
    obj: &Value,
    key: &str,
    default: bool,
    path: &Path,
    what: &str,
) -> Result<bool, WanError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(
            path,
            format!("{what}: `{key}` must be true or false, found {other}"),
        )),
    }
}

fn get_str<'a>(obj: &'a Value, key: &str, path: &Path, what: &str) -> Result<&'a str, WanError> {
    obj.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(path, format!("{what}: `{key}` is missing or not a string")))
}

fn get_id(obj: &Value, key: &str, path: &Path, what: &str) -> Result<u32, WanError> {
    obj.get(key)
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| {
            bad(
                path,
                format!("{what}: `{key}` is missing or not a token id"),
            )
        })
}

impl UmT5Tokenizer {
    /// Reads a tokenizer folder (`<model>/google/umt5-xxl`) as transformers 5's
    /// `AutoTokenizer.from_pretrained(dir)` does, the way Wan loads it: `tokenizer.json`,
    /// and when `tokenizer_config.json` names `T5Tokenizer` (the Wan release does), the
    /// pipeline that class rebuilds around the json's vocab: only a `Precompiled`
    /// normalizer is kept, the pre-tokenizer is WhitespaceSplit + Metaspace ("always",
    /// split), byte fallback is off, `<unk>` is id 2 and `</s>` is appended.
    ///
    /// Only what the class keeps is read from the json then, so the json's other
    /// components need not be supported.
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self, WanError> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let t5_class = match std::fs::read_to_string(&config_path) {
            Ok(text) => {
                let config: Value = serde_json::from_str(&text)
                    .map_err(|e| bad(&config_path, format!("not valid JSON: {e}")))?;
                let class = config.get("tokenizer_class").and_then(Value::as_str);
                matches!(class, Some("T5Tokenizer" | "T5TokenizerFast"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(WanError::Io {
                    path: config_path,
                    source,
                })
            }
        };
        let path = dir.join("tokenizer.json");
        let text = std::fs::read_to_string(&path).map_err(|source| WanError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path, t5_class)
    }

    /// Reads a Hugging Face `tokenizer.json` holding a Unigram model, with the pipeline
    /// the json describes (as the `tokenizers` library's `Tokenizer.from_file`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, WanError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| WanError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json_str(&text, path)
    }

    /// Parses the content of a `tokenizer.json`; `path` only names it in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, WanError> {
        Self::parse(text, path, false)
    }

    /// `t5_class`: keep only what transformers 5's `T5Tokenizer.__init__` takes from the
    /// json (the vocab, the first top-level `Precompiled` charsmap, the added tokens) and
    /// build the rest as that class does.
    fn parse(text: &str, path: &Path, t5_class: bool) -> Result<Self, WanError> {
        let root: Value =
            serde_json::from_str(text).map_err(|e| bad(path, format!("not valid JSON: {e}")))?;
        let model = root
            .get("model")
            .filter(|m| m.is_object())
            .ok_or_else(|| bad(path, "no `model` object"))?;
        let kind = model
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("(none)");
        if kind != "Unigram" {
            return Err(bad(
                path,
                format!("model type is `{kind}`, only `Unigram` (umT5) is supported"),
            ));
        }
        let vocab = model
            .get("vocab")
            .and_then(Value::as_array)
            .ok_or_else(|| bad(path, "model: `vocab` is missing or not a list"))?;
        if vocab.is_empty() {
            return Err(bad(path, "model: `vocab` is empty"));
        }
        let mut scores = Vec::with_capacity(vocab.len());
        let mut piece_ids = HashMap::with_capacity(vocab.len());
        let mut max_piece_bytes = 0;
        let mut min_score = f64::INFINITY;
        for (i, entry) in vocab.iter().enumerate() {
            let pair = entry.as_array().filter(|a| a.len() == 2);
            let (piece, score) = match pair.map(|a| (a[0].as_str(), a[1].as_f64())) {
                Some((Some(piece), Some(score))) => (piece, score),
                _ => {
                    return Err(bad(
                        path,
                        format!("model: vocab entry {i} is not a [piece, score] pair: {entry}"),
                    ))
                }
            };
            let id = u32::try_from(i).map_err(|_| bad(path, "model: vocab too large"))?;
            // Later duplicates win, as in the `tokenizers` library.
            piece_ids.insert(piece.to_string(), id);
            max_piece_bytes = max_piece_bytes.max(piece.len());
            min_score = min_score.min(score);
            scores.push(score);
        }
        let n_pieces = scores.len();
        let in_vocab = |id: u32, what: &str| -> Result<u32, WanError> {
            if (id as usize) < n_pieces {
                Ok(id)
            } else {
                Err(bad(
                    path,
                    format!("{what}: id {id} is outside the vocab ({n_pieces} pieces)"),
                ))
            }
        };
        let unk_id = match model.get("unk_id") {
            _ if t5_class => in_vocab(2, "T5Tokenizer's <unk>")?,
            Some(Value::Number(n)) => {
                let id = n
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| bad(path, format!("model: `unk_id` {n} is not a token id")))?;
                in_vocab(id, "model: `unk_id`")?
            }
            _ => return Err(bad(path, "model: `unk_id` is missing (umT5 has <unk>)")),
        };
        let byte_ids = if !t5_class && get_bool(model, "byte_fallback", false, path, "model")? {
            Some(
                (0..=255u8)
                    .map(|b| piece_ids.get(&format!("<0x{b:02X}>")).copied())
                    .collect(),
            )
        } else {
            None
        };
        let eos_id = *piece_ids
            .get("</s>")
            .ok_or_else(|| bad(path, "model: the vocab has no `</s>` piece"))?;
        let pad_id = *piece_ids
            .get("<pad>")
            .ok_or_else(|| bad(path, "model: the vocab has no `<pad>` piece"))?;

        let mut added = Vec::new();
        if let Some(list) = root.get("added_tokens").filter(|v| !v.is_null()) {
            let list = list
                .as_array()
                .ok_or_else(|| bad(path, "`added_tokens` is not a list"))?;
            for (i, tok) in list.iter().enumerate() {
                let what = format!("added_tokens[{i}]");
                let content = get_str(tok, "content", path, &what)?;
                if content.is_empty() {
                    return Err(bad(path, format!("{what}: empty `content`")));
                }
                let id = in_vocab(get_id(tok, "id", path, &what)?, &what)?;
                if get_bool(tok, "normalized", false, path, &what)? {
                    return Err(bad(
                        path,
                        format!("{what} `{content}`: `normalized: true` is not supported"),
                    ));
                }
                if get_bool(tok, "single_word", false, path, &what)? {
                    return Err(bad(
                        path,
                        format!("{what} `{content}`: `single_word: true` is not supported"),
                    ));
                }
                added.push(AddedToken {
                    content: content.to_string(),
                    id,
                    lstrip: get_bool(tok, "lstrip", false, path, &what)?,
                    rstrip: get_bool(tok, "rstrip", false, path, &what)?,
                });
            }
        }
        let added_first_bytes = added.iter().map(|t| t.content.as_bytes()[0]).collect();

        let mut normalizers = Vec::new();
        let mut pre_tokenizers = Vec::new();
        let (prefix_ids, suffix_ids);
        if t5_class {
            let normalizer = root.get("normalizer").filter(|v| !v.is_null());
            let candidates: Vec<&Value> = match normalizer {
                Some(n) if n.get("type").and_then(Value::as_str) == Some("Sequence") => n
                    .get("normalizers")
                    .and_then(Value::as_array)
                    .map(|l| l.iter().collect())
                    .unwrap_or_default(),
                Some(n) => vec![n],
                None => Vec::new(),
            };
            let precompiled = candidates.into_iter().find(|n| {
                n.get("type").and_then(Value::as_str) == Some("Precompiled")
                    && n.get("precompiled_charsmap").is_some()
            });
            if let Some(n) = precompiled {
                parse_normalizer(n, path, &mut normalizers)?;
            }
            pre_tokenizers = vec![
                PreTokenizer::WhitespaceSplit,
                PreTokenizer::Metaspace {
                    replacement: '\u{2581}',
                    prepend: true,
                    split: true,
                },
            ];
            (prefix_ids, suffix_ids) = (Vec::new(), vec![eos_id]);
        } else {
            if let Some(n) = root.get("normalizer").filter(|v| !v.is_null()) {
                parse_normalizer(n, path, &mut normalizers)?;
            }
            if let Some(p) = root.get("pre_tokenizer").filter(|v| !v.is_null()) {
                parse_pre_tokenizer(p, path, &mut pre_tokenizers)?;
            }
            (prefix_ids, suffix_ids) = match root.get("post_processor").filter(|v| !v.is_null()) {
                Some(p) => parse_template(p, path, &in_vocab)?,
                None => (Vec::new(), Vec::new()),
            };
        }

        Ok(Self {
            path: path.to_path_buf(),
            scores,
            piece_ids,
            max_piece_bytes,
            unk_id,
            unk_score: min_score - UNK_PENALTY,
            byte_ids,
            added,
            added_first_bytes,
            normalizers,
            pre_tokenizers,
            prefix_ids,
            suffix_ids,
            eos_id,
            pad_id,
        })
    }

    /// The file this tokenizer was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of pieces in the vocab.
    pub fn vocab_size(&self) -> usize {
        self.scores.len()
    }

    /// Id of `</s>` (1 in umT5).
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Id of `<pad>` (0 in umT5).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of a piece, if the vocab has it.
    pub fn piece_id(&self, piece: &str) -> Option<u32> {
        self.piece_ids.get(piece).copied()
    }

    /// What Wan's `T5EncoderModel` feeds the encoder for `text`: [`clean_prompt`], then
    /// [`UmT5Tokenizer::encode_cleaned`]. `max_len` counts the trailing `</s>`; Wan uses
    /// [`TEXT_LEN`].
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<u32> {
        self.encode_cleaned(&clean_prompt(text), max_len)
    }

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

fn parse_normalizer(n: &Value, path: &Path, out: &mut Vec<Normalizer>) -> Result<(), WanError> {
    let kind = get_str(n, "type", path, "normalizer")?;
    let what = format!("normalizer {kind}");
    match kind {
        "Sequence" => {
            let list = n
                .get("normalizers")
                .and_then(Value::as_array)
                .ok_or_else(|| bad(path, "normalizer Sequence: `normalizers` is not a list"))?;
            for item in list {
                parse_normalizer(item, path, out)?;
            }
        }
        "NFKC" => out.push(Normalizer::Nfkc),
        "NFC" => out.push(Normalizer::Nfc),
        "NFD" => out.push(Normalizer::Nfd),
        "NFKD" => out.push(Normalizer::Nfkd),
        "Lowercase" => out.push(Normalizer::Lowercase),
        "Precompiled" => {
            let b64 = get_str(n, "precompiled_charsmap", path, &what)?;
            let map = base64_decode(b64)
                .and_then(|bytes| Charsmap::parse(&bytes))
                .map_err(|m| bad(path, format!("normalizer Precompiled: {m}")))?;
            out.push(Normalizer::Precompiled(Arc::new(map)));
        }
        "Strip" => out.push(Normalizer::Strip {
            left: get_bool(n, "strip_left", false, path, &what)?,
            right: get_bool(n, "strip_right", false, path, &what)?,
        }),
        "Replace" => {
            let content = get_str(n, "content", path, &what)?.to_string();
            let pattern = n
                .get("pattern")
                .ok_or_else(|| bad(path, "normalizer Replace: no `pattern`"))?;
            let pattern = if let Some(s) = pattern.get("String").and_then(Value::as_str) {
                if s.is_empty() {
                    return Err(bad(path, "normalizer Replace: empty pattern"));
                }
                Pattern::Literal(s.to_string())
            } else if let Some(r) = pattern.get("Regex").and_then(Value::as_str) {
                parse_regex(r)
                    .map_err(|m| bad(path, format!("normalizer Replace: regex `{r}`: {m}")))?
            } else {
                return Err(bad(
                    path,
                    format!("normalizer Replace: unknown pattern {pattern}"),
                ));
            };
            out.push(Normalizer::Replace { pattern, content });
        }
        other => {
            return Err(bad(
                path,
                format!("normalizer type `{other}` is not supported"),
            ))
        }
    }
    Ok(())
}

fn parse_pre_tokenizer(
    p: &Value,
    path: &Path,
    out: &mut Vec<PreTokenizer>,
) -> Result<(), WanError> {
    let kind = get_str(p, "type", path, "pre_tokenizer")?;
    match kind {
        "Sequence" => {
            let list = p
                .get("pretokenizers")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    bad(
                        path,
                        "pre_tokenizer Sequence: `pretokenizers` is not a list",
                    )
                })?;
            for item in list {
                parse_pre_tokenizer(item, path, out)?;
            }
        }
        "WhitespaceSplit" => out.push(PreTokenizer::WhitespaceSplit),
        "Metaspace" => {
            let what = "pre_tokenizer Metaspace";
            let rep = get_str(p, "replacement", path, what)?;
            let mut chars = rep.chars();
            let replacement = match (chars.next(), chars.next()) {
                (Some(c), None) => c,
                _ => {
                    return Err(bad(
                        path,
                        format!("{what}: `replacement` must be one character, found `{rep}`"),
                    ))
                }
            };
            let prepend = match p.get("prepend_scheme").and_then(Value::as_str) {
                Some("always") => true,
                Some("never") => false,
                Some(other) => {
                    return Err(bad(
                        path,
                        format!(
                        "{what}: prepend_scheme `{other}` is not supported (umT5 uses `always`)"
                    ),
                    ))
                }
                // Files written before prepend_scheme existed.
                None => get_bool(p, "add_prefix_space", true, path, what)?,
            };
            let split = get_bool(p, "split", true, path, what)?;
            out.push(PreTokenizer::Metaspace {
                replacement,
                prepend,
                split,
            });
        }
        other => {
            return Err(bad(
                path,
                format!("pre_tokenizer type `{other}` is not supported"),
            ))
        }
    }
    Ok(())
}

/// The special tokens a `TemplateProcessing` puts before and after `$A`.
fn parse_template(
    p: &Value,
    path: &Path,
    in_vocab: &dyn Fn(u32, &str) -> Result<u32, WanError>,
) -> Result<(Vec<u32>, Vec<u32>), WanError> {
    let kind = get_str(p, "type", path, "post_processor")?;
    if kind != "TemplateProcessing" {
        return Err(bad(
            path,
            format!("post_processor type `{kind}` is not supported (umT5 uses TemplateProcessing)"),
        ));
    }
    let single = p
        .get("single")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(path, "post_processor: `single` is not a list"))?;
    let specials = p.get("special_tokens");
    let (mut prefix, mut suffix) = (Vec::new(), Vec::new());
    let mut seen_a = false;
    for item in single {
        if let Some(seq) = item.get("Sequence") {
            if seq.get("id").and_then(Value::as_str) != Some("A") || seen_a {
                return Err(bad(
                    path,
                    format!("post_processor: unexpected template item {item}"),
                ));
            }
            seen_a = true;
        } else if let Some(tok) = item.get("SpecialToken") {
            let name = get_str(tok, "id", path, "post_processor SpecialToken")?;
            let ids = specials
                .and_then(|s| s.get(name))
                .and_then(|s| s.get("ids"))
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    bad(
                        path,
                        format!("post_processor: no ids for special token `{name}`"),
                    )
                })?;
            for id in ids {
                let id = id
                    .as_u64()
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| {
                        bad(path, format!("post_processor: bad id for `{name}`: {id}"))
                    })?;
                let id = in_vocab(id, "post_processor")?;
                if seen_a {
                    suffix.push(id);
                } else {
                    prefix.push(id);
                }
            }
        } else {
            return Err(bad(
                path,
                format!("post_processor: unexpected template item {item}"),
            ));
        }
    }
    if !seen_a {
        return Err(bad(
            path,
            "post_processor: the `single` template has no `$A`",
        ));
    }
    Ok((prefix, suffix))
}

/// The regexes tokenizer.json files use in `Replace` normalizers are tiny (umT5's is
/// `" {2,}"`): one literal character, escape or `[...]` class with an optional `+` or
/// `{n}` / `{n,}` / `{n,m}`. Anything else is refused rather than guessed.
fn parse_regex(re: &str) -> Result<Pattern, String> {
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

fn replace(text: &str, pattern: &Pattern, content: &str) -> String {
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

/// sentencepiece's precompiled normalization map: a darts-clone double-array trie over
/// the UTF-8 of the source strings, whose values index NUL-terminated replacements.
#[derive(Debug)]
struct Charsmap {
    units: Vec<u32>,
    replacements: String,
}

impl Charsmap {
    /// Layout: u32 LE byte length of the trie, the trie's u32 LE units, the replacements.
    fn parse(blob: &[u8]) -> Result<Self, String> {
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
    fn normalize(&self, text: &str) -> String {
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

fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let value = |c: u8| -> Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("charsmap: `{}` is not base64", c as char)),
        } as u32)
    };
    let body = text.trim_end_matches('=').as_bytes();
    if text.len() & 3 != 0 || text.len() - body.len() > 2 {
        return Err("charsmap: base64 of a wrong length".into());
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    for chunk in body.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Wan's prompt cleaning: whitespace_clean(basic_clean(text)).

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
fn c1_as_windows_1252(c: char) -> char {
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

fn named_entity(name: &str) -> Option<&'static str> {
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

/// A small valid umT5-shaped `tokenizer.json` (the `unigram` parity fixture: a few
/// hundred pieces, `<pad>` 0, `</s>` 1, `<unk>` 2).
pub const TINY_TOKENIZER_JSON: &str =
    include_str!("../tests/fixtures/tokenizer/unigram/tokenizer.json");

/// Writes [`TINY_TOKENIZER_JSON`] to `dir/google/umt5-xxl/tokenizer.json`, where a Wan
/// release folder keeps its tokenizer, and returns that path.
pub fn write_tiny_tokenizer(dir: impl AsRef<Path>) -> Result<PathBuf, WanError> {
    let folder = dir.as_ref().join(TOKENIZER_SUBDIR);
    std::fs::create_dir_all(&folder).map_err(|source| WanError::Io {
        path: folder.clone(),
        source,
    })?;
    let path = folder.join("tokenizer.json");
    std::fs::write(&path, TINY_TOKENIZER_JSON).map_err(|source| WanError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_table_is_sorted_for_binary_search() {
        assert!(ENTITIES.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(ENTITIES.len(), 253);
    }

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

    #[test]
    fn html_unescape_numeric_edges_follow_python() {
        assert_eq!(
            html_unescape("&#0;&#13;&#128;&#x81;&#1;&#xFFFF;&#xD800;&#99999999999;"),
            "\u{fffd}\r\u{20ac}\u{81}\u{fffd}\u{fffd}"
        );
        assert_eq!(html_unescape("&#65&#x42;&#;&#x;"), "AB&#;&#x;");
    }
}
