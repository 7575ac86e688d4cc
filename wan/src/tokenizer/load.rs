//! Reading a `tokenizer.json` (and `tokenizer_config.json`'s class) into the pipeline an
//! [`UmT5Tokenizer`] runs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use super::base64::base64_decode;
use super::charsmap::Charsmap;
use super::regex::parse_regex;
use super::regex::Pattern;
use super::{AddedToken, Normalizer, PreTokenizer, UmT5Tokenizer, UNK_PENALTY};
use crate::error::WanError;

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
