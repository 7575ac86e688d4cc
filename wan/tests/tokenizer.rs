//! The native umT5 tokenizer against Wan's `HuggingfaceTokenizer` (transformers +
//! tokenizers + ftfy) on two small umT5-shaped tokenizers built by
//! `tools/wan_fixtures/tokenizer_fixtures.py`, plus the release layout and the errors.

use std::path::{Path, PathBuf};

use serde_json::Value;
use wan::tokenizer::{clean_prompt, write_tiny_tokenizer, UmT5Tokenizer, TOKENIZER_SUBDIR};
use wan::WanError;

const VARIANTS: [&str; 5] = [
    "unigram",
    "unigram_bytes",
    "t5_class",
    "precompiled",
    "umt5_like",
];

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

struct Case {
    name: String,
    text: String,
    max_len: usize,
    cleaned: String,
    /// variant -> (Wan's ids, the bare tokenizer's ids)
    ids: Vec<(String, Vec<u32>, Vec<u32>)>,
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids must be a list")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("id must be a number")).expect("id fits u32"))
        .collect()
}

fn cases() -> Vec<Case> {
    let path = fixture_dir().join("cases.json");
    let text = std::fs::read_to_string(&path).expect("cases.json must be readable");
    let doc: Value = serde_json::from_str(&text).expect("cases.json must be JSON");
    doc["cases"]
        .as_array()
        .expect("cases must be a list")
        .iter()
        .map(|c| Case {
            name: c["name"].as_str().expect("name").to_string(),
            text: c["text"].as_str().expect("text").to_string(),
            max_len: c["max_len"].as_u64().expect("max_len") as usize,
            cleaned: c["cleaned"].as_str().expect("cleaned").to_string(),
            ids: VARIANTS
                .iter()
                .map(|v| {
                    let e = &c["ids"][*v];
                    (v.to_string(), ids(&e["wan"]), ids(&e["raw"]))
                })
                .collect(),
        })
        .collect()
}

fn load(variant: &str) -> UmT5Tokenizer {
    UmT5Tokenizer::from_dir(fixture_dir().join(variant))
        .unwrap_or_else(|e| panic!("fixture tokenizer {variant} must load: {e}"))
}

#[test]
fn every_prompt_matches_wan_and_the_bare_tokenizer() {
    let cases = cases();
    assert!(cases.len() >= 30, "the fixture holds {} cases", cases.len());
    let toks: Vec<(String, UmT5Tokenizer)> =
        VARIANTS.iter().map(|v| (v.to_string(), load(v))).collect();
    let mut failures = Vec::new();
    for case in &cases {
        let cleaned = clean_prompt(&case.text);
        if cleaned != case.cleaned {
            failures.push(format!(
                "{}: cleaning gave {cleaned:?}, Wan gives {:?}",
                case.name, case.cleaned
            ));
        }
        for ((variant, wan, raw), (_, tok)) in case.ids.iter().zip(&toks) {
            let got = tok.encode(&case.text, case.max_len);
            if &got != wan {
                failures.push(format!(
                    "{} [{variant}] encode: got {got:?}, Wan gives {wan:?}",
                    case.name
                ));
            }
            let got = tok.encode_cleaned(&case.text, case.max_len);
            if &got != raw {
                failures.push(format!(
                    "{} [{variant}] encode_cleaned: got {got:?}, the bare tokenizer gives {raw:?}",
                    case.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The fixture must exercise what it claims to: unknowns, byte fallback, truncation.
#[test]
fn fixture_cases_cover_unknowns_bytes_and_truncation() {
    let cases = cases();
    let plain = load("unigram");
    let bytes = load("unigram_bytes");
    let unk = plain.piece_id("<unk>").expect("<unk> piece");
    let byte_a = bytes.piece_id("<0x41>").expect("byte piece");
    let find = |name: &str| {
        cases
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("case {name}"))
    };
    assert!(find("unknown_chars").ids[0].1.contains(&unk));
    // Byte pieces sit at ids 3..=258 in the byte variant.
    assert!(find("unknown_cjk").ids[1]
        .1
        .iter()
        .any(|&id| (3..=258).contains(&id)));
    assert!(find("byte_piece_literal").ids[1].1.contains(&byte_a));
    // transformers' T5Tokenizer turns byte fallback off and drops the NFKC normalizer.
    let cjk = find("unknown_cjk");
    assert_ne!(cjk.ids[1].1, cjk.ids[2].1);
    let width = find("full_width");
    assert_ne!(width.ids[1].2, width.ids[2].2);
    let truncated = find("long_truncated");
    assert_eq!(truncated.ids[0].1.len(), truncated.max_len);
    assert!(find("long_full").ids[0].1.len() > 100);
}

#[test]
fn truncation_keeps_room_for_the_eos() {
    let tok = load("unigram");
    let eos = tok.eos_id();
    assert_eq!((eos, tok.pad_id()), (1, 0));
    let text = cases()
        .into_iter()
        .find(|c| c.name == "long_full")
        .expect("long_full case")
        .text;
    let full = tok.encode(&text, 0);
    assert_eq!(full.last(), Some(&eos));
    assert_eq!(
        tok.encode(&text, 512),
        full,
        "a 512 limit does not bind here"
    );
    for max_len in 1..40 {
        let got = tok.encode(&text, max_len);
        let mut want = full[..max_len - 1].to_vec();
        want.push(eos);
        assert_eq!(got, want, "max_len {max_len}");
    }
}

#[test]
fn tiny_tokenizer_lands_where_the_release_keeps_it_and_encodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let written = write_tiny_tokenizer(dir.path()).expect("write the tiny tokenizer");
    assert_eq!(
        written,
        dir.path().join("google/umt5-xxl/tokenizer.json"),
        "the release layout"
    );
    let tok = UmT5Tokenizer::from_dir(dir.path().join(TOKENIZER_SUBDIR)).expect("load it back");
    assert_eq!(tok.path(), written.as_path());
    let plain = cases()
        .into_iter()
        .find(|c| c.name == "plain")
        .expect("plain case");
    assert_eq!(tok.encode(&plain.text, plain.max_len), plain.ids[0].1);
    assert_eq!(tok.vocab_size(), load("unigram").vocab_size());
}

fn write(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, body).expect("write test file");
    path
}

fn bad_message(body: &str) -> (PathBuf, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), body);
    match UmT5Tokenizer::from_file(&path) {
        Err(e @ WanError::BadTokenizer { .. }) => (path, e.to_string()),
        Err(other) => panic!("expected BadTokenizer, got {other}"),
        Ok(_) => panic!("{body} must be refused"),
    }
}

#[test]
fn broken_files_are_refused_with_the_file_and_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope/tokenizer.json");
    match UmT5Tokenizer::from_file(&missing) {
        Err(e @ WanError::Io { .. }) => assert!(e.to_string().contains("nope/tokenizer.json")),
        other => panic!("missing file: {other:?}"),
    }

    let fixture =
        std::fs::read_to_string(fixture_dir().join("unigram/tokenizer.json")).expect("fixture");
    let good: Value = serde_json::from_str(&fixture).expect("fixture json");
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        edit(&mut v);
        v.to_string()
    };

    let checks: Vec<(String, &str)> = vec![
        ("{ not json".to_string(), "not valid JSON"),
        (with(&|v| v["model"]["type"] = "BPE".into()), "`BPE`"),
        (with(&|v| v["model"]["unk_id"] = Value::Null), "unk_id"),
        (
            with(&|v| v["model"]["vocab"][5] = "x".into()),
            "vocab entry 5",
        ),
        (
            with(&|v| v["model"]["vocab"] = serde_json::json!([])),
            "empty",
        ),
        (
            with(&|v| v["normalizer"] = serde_json::json!({"type": "BertNormalizer"})),
            "`BertNormalizer`",
        ),
        (
            with(&|v| {
                v["normalizer"] = serde_json::json!({"type": "Replace",
                    "pattern": {"Regex": "(a|b)*"}, "content": ""})
            }),
            "(a|b)*",
        ),
        (
            with(&|v| {
                v["pre_tokenizer"] = serde_json::json!({"type": "Metaspace",
                    "replacement": "▁", "prepend_scheme": "first", "split": true})
            }),
            "prepend_scheme `first`",
        ),
        (
            with(&|v| {
                v["normalizer"] = serde_json::json!({"type": "Precompiled",
                    "precompiled_charsmap": "AAAA!!!!"})
            }),
            "not base64",
        ),
        (
            with(&|v| {
                v["normalizer"] = serde_json::json!({"type": "Precompiled",
                    "precompiled_charsmap": "/////w=="})
            }),
            "does not fit",
        ),
        (
            with(&|v| v["post_processor"]["special_tokens"] = serde_json::json!({})),
            "`</s>`",
        ),
        (
            with(&|v| v["added_tokens"][1]["id"] = 999_999.into()),
            "999999",
        ),
    ];
    for (body, needle) in checks {
        let (path, message) = bad_message(&body);
        assert!(
            message.contains(&path.display().to_string()) && message.contains(needle),
            "message {message:?} must name the file and {needle:?}"
        );
    }
}

#[test]
fn from_file_reads_the_json_as_is_and_from_dir_follows_tokenizer_config() {
    let t5_dir = fixture_dir().join("t5_class");
    let as_json = UmT5Tokenizer::from_file(t5_dir.join("tokenizer.json")).expect("load file");
    let as_t5 = UmT5Tokenizer::from_dir(&t5_dir).expect("load dir");
    let bytes = load("unigram_bytes");
    for case in cases() {
        assert_eq!(
            as_json.encode(&case.text, case.max_len),
            bytes.encode(&case.text, case.max_len),
            "{}: the same json gives the same ids",
            case.name
        );
    }
    assert_ne!(as_json.encode("ＡＢ 她", 512), as_t5.encode("ＡＢ 她", 512));

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        t5_dir.join("tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .expect("copy");
    let config = dir.path().join("tokenizer_config.json");
    std::fs::write(&config, "{ broken").expect("write config");
    match UmT5Tokenizer::from_dir(dir.path()) {
        Err(e @ WanError::BadTokenizer { .. }) => {
            assert!(e.to_string().contains(&config.display().to_string()), "{e}")
        }
        other => panic!("a broken tokenizer_config.json must be refused: {other:?}"),
    }
}

/// Loaded as `T5Tokenizer`, only the vocab, the charsmap and the added tokens of the json
/// count, as in transformers 5: components this reader does not support do not matter.
#[test]
fn t5_class_ignores_the_json_parts_the_class_rebuilds() {
    let src = fixture_dir().join("umt5_like");
    let text = std::fs::read_to_string(src.join("tokenizer.json")).expect("fixture");
    let mut json: Value = serde_json::from_str(&text).expect("fixture json");
    json["pre_tokenizer"] = serde_json::json!({"type": "BertPreTokenizer"});
    json["post_processor"] = serde_json::json!({"type": "RobertaProcessing"});
    json["model"]["unk_id"] = Value::Null;
    json["model"]["byte_fallback"] = true.into();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), &json.to_string());
    std::fs::copy(
        src.join("tokenizer_config.json"),
        dir.path().join("tokenizer_config.json"),
    )
    .expect("copy config");
    assert!(
        UmT5Tokenizer::from_file(&path).is_err(),
        "as a bare json it is refused"
    );
    let edited = UmT5Tokenizer::from_dir(dir.path()).expect("as T5Tokenizer it loads");
    let reference = load("umt5_like");
    for case in cases() {
        assert_eq!(
            edited.encode(&case.text, case.max_len),
            reference.encode(&case.text, case.max_len),
            "{}",
            case.name
        );
    }
}

/// The tiny Live Avatar release (the test and demo checkpoint) carries its tokenizer where a
/// real release keeps it, so a job's prompt can be tokenized from the model directory alone.
#[test]
fn tiny_release_holds_a_tokenizer_in_the_release_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    wan::release::write_tiny_release(dir.path(), 3).expect("write the tiny release");
    let tok = UmT5Tokenizer::from_dir(dir.path().join(wan::release::TOKENIZER_DIR))
        .expect("the release's tokenizer loads");
    let plain = cases()
        .into_iter()
        .find(|c| c.name == "plain")
        .expect("plain case");
    assert_eq!(tok.encode(&plain.text, plain.max_len), plain.ids[0].1);
}
