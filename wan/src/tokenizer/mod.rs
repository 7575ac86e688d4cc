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
//!
//! # Modules, by job
//! - `load`: reading `tokenizer.json` (and `tokenizer_config.json`) into the pipeline;
//! - `encode`: the pipeline's stages on a text (added tokens, normalizers, pre-tokenizers,
//!   the Unigram Viterbi);
//! - `regex`: the tiny regex subset `Replace` normalizers use;
//! - `charsmap` (with `base64`): sentencepiece's precompiled normalization map;
//! - `clean`: Wan's prompt cleaning, over `ftfy` (the port of `ftfy.fix_text`) and `html`
//!   (Python's `html.unescape` and its entity table).

mod base64;
mod charsmap;
mod clean;
mod encode;
mod ftfy;
mod html;
mod load;
mod regex;

use crate::error::WanError;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use charsmap::Charsmap;
pub use clean::clean_prompt;
pub use ftfy::ftfy_fix_text;
pub use html::html_unescape;
use regex::Pattern;

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

impl UmT5Tokenizer {
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
}

/// A small valid umT5-shaped `tokenizer.json` (the `unigram` parity fixture: a few
/// hundred pieces, `<pad>` 0, `</s>` 1, `<unk>` 2).
pub const TINY_TOKENIZER_JSON: &str =
    include_str!("../../tests/fixtures/tokenizer/unigram/tokenizer.json");

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
