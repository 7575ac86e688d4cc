"""Tokenizer parity fixtures for the `wan` crate (`wan/src/tokenizer.rs`).

The umT5 tokenizer of the Wan release cannot be downloaded here, so this script
builds five small tokenizers with the same pipeline shape out of the `tokenizers`
library, saves their `tokenizer.json`, and records what Wan's own
`HuggingfaceTokenizer` (clean='whitespace', padding to max_length, truncation,
add_special_tokens) returns for a list of prompts, keeping only the unpadded
tokens (`ids[:mask.sum()]`, as `T5EncoderModel` does). It also records the text
after Wan's cleaning and the ids of the bare tokenizer (no cleaning), so the Rust
test can check each stage.

- `unigram/`: Unigram model without byte fallback (unknown characters become
  `<unk>`), normalizer NFKC + Replace(" {2,}" -> " "), pre-tokenizer
  WhitespaceSplit + Metaspace(prepend "always", split) (what transformers 5's
  T5Tokenizer builds), post-processor `$A </s>`.
- `unigram_bytes/`: the same pieces plus the 256 `<0xNN>` byte pieces with
  byte fallback on; normalizer NFKC + Strip(right) + Replace(" {2,}" -> "▁"),
  a bare Metaspace pre-tokenizer (what transformers' SpmConverter writes).
- `precompiled/`: umT5's normalizer shape, a `Precompiled` sentencepiece charsmap
  (`nmt_nfkc`) + Replace(" {2,}" -> " "), a bare Metaspace pre-tokenizer, no byte
  fallback.
- `umt5_like/`: the `precompiled` file with a tokenizer_config.json naming
  `T5Tokenizer`: the shape Wan loads from the release with transformers 5.
- `t5_class/`: the `unigram_bytes` file with a tokenizer_config.json naming
  `T5Tokenizer`, as the Wan release has. transformers 5 then rebuilds the pipeline
  from the class (only a `Precompiled` normalizer kept, WhitespaceSplit + Metaspace,
  byte fallback off); the Rust `from_dir` mirrors that.

The charsmap is sentencepiece's `nmt_nfkc` map. It is read from the committed
`precompiled/tokenizer.json`; to bootstrap, pass `--charsmap FILE` with a json holding
a `precompiled_charsmap` (for instance `test.json` of the `spm_precompiled` 0.1.4
crate, in ~/.cargo/registry once the workspace has been built).

The vocabulary is hand-built from a fixed corpus (substring counts, log
frequencies rounded to 6 decimals), so the output is identical on every run.

Run with the venv of requirements.txt:
    /path/to/venv/bin/python tools/wan_fixtures/tokenizer_fixtures.py
"""

import base64
import importlib.util
import json
import math
import os
import sys
import tempfile

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "wan", "tests", "fixtures", "tokenizer")

CORPUS = [
    "a woman talks to the camera in a bright studio",
    "a man is singing on a stage with warm light and soft music",
    "the person looks at the viewer and smiles, then nods slowly",
    "close-up portrait, natural skin, detailed eyes, 4k, high quality",
    "hello world, how are you today? I am fine, thank you!",
    "numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024 3.14",
    "die Größe der Straße ist übermäßig schön, sagt der Bär",
    "Über den Wolken: Äpfel, Öl und süße Grüße",
    "一个女人在明亮的工作室里对着镜头说话",
    "他在舞台上唱歌，灯光温暖",
    "smile 😀 camera 🎬 party 🎉 heart ❤",
    "Tom & Jerry <3 \"cat\" 'dog' (fine) - yes; no: [ok] {x} / # @ * + = ~ _",
    "reading writing singing talking walking looking",
    "the the the and and of of in in on on with with",
]
# Characters kept out of the vocabulary so that the prompts hit unknowns.
EXCLUDED = set("qzQZ€Ω√∫≈ç")
SPECIALS = ["<pad>", "</s>", "<unk>"]
N_PIECES = 400


def build_vocab():
    counts = {}
    chars = set()
    for line in CORPUS:
        for word in line.split():
            w = "▁" + word
            chars.update(w)
            for i in range(len(w)):
                for j in range(i + 1, min(len(w), i + 8) + 1):
                    piece = w[i:j]
                    counts[piece] = counts.get(piece, 0) + 1
    chars -= EXCLUDED
    singles = sorted(chars)
    multi = sorted((p for p in counts if len(p) > 1 and not (set(p) & EXCLUDED)),
                   key=lambda p: (-counts[p] * len(p), p))
    pieces = singles + [p for p in multi if p not in chars][: N_PIECES - len(singles)]
    total = sum(counts[p] for p in pieces)
    scored = [(p, round(math.log(counts[p] / total), 6)) for p in pieces]
    scored.sort(key=lambda ps: (-ps[1], ps[0]))
    return scored


def load_charsmap(argv):
    if len(argv) == 2 and argv[0] == "--charsmap":
        source = argv[1]
    elif not argv:
        source = os.path.join(OUT, "precompiled", "tokenizer.json")
    else:
        raise SystemExit("usage: tokenizer_fixtures.py [--charsmap FILE]")
    with open(source, encoding="utf-8") as f:
        doc = json.load(f)
    found = []

    def walk(v):
        if isinstance(v, dict):
            if isinstance(v.get("precompiled_charsmap"), str):
                found.append(v["precompiled_charsmap"])
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(doc)
    if not found:
        raise SystemExit(f"{source}: no precompiled_charsmap")
    return base64.b64decode(found[0])


def make_tokenizer(byte_fallback, charsmap=None):
    pieces = build_vocab()
    vocab = [(s, 0.0) for s in SPECIALS]
    if byte_fallback:
        vocab += [(f"<0x{b:02X}>", 0.0) for b in range(256)]
    vocab += pieces
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=byte_fallback))
    if charsmap is not None:
        tok.normalizer = normalizers.Sequence([
            normalizers.Precompiled(charsmap),
            normalizers.Replace(Regex(" {2,}"), " "),
        ])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="always", split=True)
    elif byte_fallback:
        tok.normalizer = normalizers.Sequence([
            normalizers.NFKC(),
            normalizers.Strip(left=False, right=True),
            normalizers.Replace(Regex(" {2,}"), "▁"),
        ])
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="always", split=True)
    else:
        tok.normalizer = normalizers.Sequence([
            normalizers.NFKC(),
            normalizers.Replace(Regex(" {2,}"), " "),
        ])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ])
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"],
        special_tokens=[("</s>", 1)])
    tok.add_special_tokens(SPECIALS)
    return tok


LONG = ("a woman talks to the camera in a bright studio, then she smiles and nods "
        "slowly while the warm light falls on her face; " * 6).strip()

# (name, text, max_len)
CASES = [
    ("plain", "A woman talks to the camera in a bright studio.", 512),
    ("empty", "", 512),
    ("only_spaces", "    ", 512),
    ("leading_trailing", "   leading and trailing   ", 512),
    ("multiple_spaces", "multiple     spaces   between  words", 512),
    ("tabs_newlines", "tabs\tand\nnewlines\r\nmixed \t\n  here", 512),
    ("punctuation", "Hello, world! How's it going? (fine) - 100% sure; yes: no. [ok] {x}", 512),
    ("numbers", "Numbers 0123456789 and 3.14159 and 1,000,000 in 2024", 512),
    ("german", "Größe, Übermäßig, schön & süß: Äpfel und Öl", 512),
    ("chinese", "一个女人在明亮的工作室里说话", 512),
    ("emoji", "emoji 😀🎬 party 🎉 heart ❤️", 512),
    ("unknown_chars", "qzqz QZ quiz Ω≈ç √∫ zzz", 512),
    ("unknown_cjk", "她跳舞 and 猫", 512),
    ("full_width", "ＡＢＣ　ｆｕｌｌ１２３！ｗｉｄｔｈ", 512),
    ("html_entities", "Tom &amp; Jerry &quot;cat&quot; &#39;dog&#39; &#x4E00;&#20010; &nbsp;x", 512),
    ("html_with_tag", "a <b> tag &amp;amp; entity &lt;3", 512),
    ("html_nested", "&amp;amp;amp;amp; and &amp;lt;", 512),
    ("html_legacy", "&ampx &amp &copy2024 &lt;&gt &notanentity; &#0; &#128; &#x110000;", 512),
    ("html_upper", "&AMP; &EACUTE; &Eacute; &eacute; &QUOT;", 512),
    ("curly_quotes", "“Hello” ‘world’ it’s „low“", 512),
    ("ligatures", "ﬁne ﬂow ﬀ ﬃ ĳ", 512),
    ("control_chars", "bell\x07 and \x1b[31mred\x1b[0m text\x00\x7f", 512),
    ("c1_controls", "wait\x85 price \x80 5 \x93quoted\x94", 512),
    ("exotic_spaces", "a\u00a0b\u2003c\u3000d\u2028e\u200bf", 512),
    ("special_tokens_in_text", "before </s> after <pad> and <unk>", 512),
    ("byte_piece_literal", "x <0x41> y <0xZZ>", 512),
    ("metaspace_char", "▁ already ▁▁ has metaspace▁", 512),
    ("combining", "e\u0301\u0301 A\u030a o\u0308\u0323 \u0301x", 512),
    ("graphemes", "👩\u200d👩\u200d👧 🇩🇪 क्षि नमस्ते 한국어 \u1100\u1161", 512),
    ("tilde_and_blocks", "～ ~ ▁x \u2581\u2581 \ufffd \u00ad soft", 512),
    ("nfkc_compat", "e\u0301 Å ½ ² ㎏ Ⅻ ｶﾞ", 512),
    ("mixed_case", "MiXeD CaSe WORDS and lowercase", 512),
    ("repeats", "singsingsing lalalala the the the", 512),
    ("long_truncated", LONG, 16),
    ("long_full", LONG, 512),
    ("max_len_1", "a woman talks", 1),
    ("max_len_2", "a woman talks", 2),
    ("max_len_0", "a woman talks", 0),
]


def load_wan_tokenizer_class():
    # Import wan's tokenizers.py on its own: importing the `wan` package runs
    # t5.py, which asks for a CUDA device at import time.
    package = importlib.util.find_spec("wan")
    path = os.path.join(package.submodule_search_locations[0], "modules", "tokenizers.py")
    spec = importlib.util.spec_from_file_location("wan_modules_tokenizers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.HuggingfaceTokenizer


def main():
    hf_tokenizer = load_wan_tokenizer_class()
    from transformers import AutoTokenizer

    charsmap = load_charsmap(sys.argv[1:])
    names = ["unigram", "unigram_bytes", "t5_class", "precompiled", "umt5_like"]
    configs = {
        "precompiled": {"tokenizer_class": "PreTrainedTokenizerFast"},
        "umt5_like": {"tokenizer_class": "T5Tokenizer", "extra_ids": 0},
        "unigram": {"tokenizer_class": "PreTrainedTokenizerFast"},
        "unigram_bytes": {"tokenizer_class": "PreTrainedTokenizerFast"},
        "t5_class": {"tokenizer_class": "T5Tokenizer", "extra_ids": 0},
    }
    expected = {name: [] for name in names}
    cleaned = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name in ("precompiled", "umt5_like"):
                tok = make_tokenizer(byte_fallback=False, charsmap=charsmap)
            else:
                tok = make_tokenizer(byte_fallback=(name != "unigram"))
            out_dir = os.path.join(OUT, name)
            os.makedirs(out_dir, exist_ok=True)
            # sort_keys via a round trip: the file is byte-for-byte stable.
            text = json.dumps(json.loads(tok.to_str()), ensure_ascii=False, indent=1)
            with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
                f.write(text + "\n")
            config = dict(configs[name], eos_token="</s>", pad_token="<pad>",
                          unk_token="<unk>", model_max_length=512)
            with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
                f.write(json.dumps(config, indent=1) + "\n")
            # transformers may write caches next to the files: load from a copy.
            load_dir = os.path.join(tmp, name)
            os.makedirs(load_dir)
            for file in ("tokenizer.json", "tokenizer_config.json"):
                with open(os.path.join(out_dir, file), encoding="utf-8") as src, \
                        open(os.path.join(load_dir, file), "w", encoding="utf-8") as dst:
                    dst.write(src.read())
            bare = AutoTokenizer.from_pretrained(load_dir)
            for case_name, prompt, max_len in CASES:
                wan = hf_tokenizer(load_dir, seq_len=max_len, clean="whitespace")
                ids, mask = wan(prompt, return_mask=True, add_special_tokens=True)
                n = int(mask.gt(0).sum())
                wan_ids = [int(i) for i in ids[0][:n]]
                raw = bare(prompt, truncation=True, max_length=max_len,
                           add_special_tokens=True)["input_ids"]
                expected[name].append({"wan": wan_ids, "raw": [int(i) for i in raw]})
                if name == names[0]:
                    cleaned.append(wan._clean(prompt))

    cases = []
    for i, (case_name, prompt, max_len) in enumerate(CASES):
        cases.append({
            "name": case_name,
            "text": prompt,
            "max_len": max_len,
            "cleaned": cleaned[i],
            "ids": {name: expected[name][i] for name in names},
        })
    doc = {
        "generator": "tools/wan_fixtures/tokenizer_fixtures.py",
        "note": "ids.*.wan: wan.modules.tokenizers.HuggingfaceTokenizer(clean='whitespace', "
                "seq_len=max_len) ids[:mask.sum()]; ids.*.raw: the bare tokenizer, "
                "truncation=True, max_length=max_len; cleaned: Wan's _clean(text)",
        "cases": cases,
    }
    with open(os.path.join(OUT, "cases.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
