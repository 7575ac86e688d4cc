//! Checking a Live Avatar model directory without loading it (the library part of
//! `reelspool model check DIR`): every file's tensor list is read from its header alone and
//! compared with the module trees the engine builds from the directory's config, and every
//! problem is reported with its file and key, not only the first.
//!
//! What is read, per file:
//!
//! - **safetensors** (the DiT shards, the LoRA, the wav2vec2 weights, the VAE and umT5 when
//!   converted): the 8-byte header length and the JSON header only. Checked: every tensor the
//!   model has is there once with its exact shape and a float dtype, no tensor the model lacks
//!   is there, each entry's byte range matches its dtype and shape, and the file is as long as
//!   its header says (a truncated download is caught).
//! - **torch pickles** (`Wan2.1_VAE.pth`, `models_t5_umt5-xxl-enc-bf16.pth`,
//!   `pytorch_model.bin`): burn-store's `PytorchStore` reads the zip directory and the
//!   pickle's tensor records (names, shapes, dtypes) without reading the tensor data (for the
//!   zip format `torch.save` has written since PyTorch 1.6, the released files' format; an
//!   old-style plain pickle is read whole); the same name, shape and dtype checks apply. Not checked: whether each tensor's stored bytes
//!   are complete (a file cut inside the data is found only when it loads; a file cut so its
//!   zip directory is gone is reported as unreadable).
//! - **configs**: `config.json` as the engine reads it (with the release's defaults for what
//!   it leaves out), wav2vec2's `config.json` against the DiT's audio input,
//!   `preprocessor_config.json`'s `do_normalize`.
//! - **tokenizer**: `google/umt5-xxl/` is read as the engine reads it (`tokenizer.json` and
//!   `tokenizer_config.json`).
//! - **LoRA** (either layout, [`crate::release::find_lora`]): exactly the layers Live Avatar's
//!   adapts ([`crate::lora::lora_targets`]), each with `lora_A` `[rank, in]` and `lora_B`
//!   `[out, rank]`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use burn_store::{ModuleStore, PytorchStore};

use crate::keys::list_params;
use crate::loader::{S2V_INDEX, S2V_SINGLE};
use crate::lora::lora_targets;
use crate::model::WanS2v;
use crate::pipeline::LiveAvatarConfig;
use crate::release::{
    find_lora, CONFIG_FILE, S2V_DIR, T5_PTH, T5_SAFETENSORS, TOKENIZER_DIR, VAE_PTH,
    VAE_SAFETENSORS, W2V_DIR,
};
use crate::t5::T5Encoder;
use crate::vae::WanVae;
use crate::wav2vec2::{Wav2Vec2Config, Wav2Vec2Model, W2V_BIN, W2V_SAFETENSORS};

/// The part of a release a problem belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    Config,
    Dit,
    Vae,
    Umt5,
    Wav2vec2,
    Lora,
    Tokenizer,
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Component::Config => "config",
            Component::Dit => "DiT",
            Component::Vae => "VAE",
            Component::Umt5 => "umT5",
            Component::Wav2vec2 => "wav2vec2",
            Component::Lora => "LoRA",
            Component::Tokenizer => "tokenizer",
        })
    }
}

/// What is wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum ProblemKind {
    /// The file is not there.
    MissingFile,
    /// The file cannot be read as what it should be.
    Unreadable { message: String },
    /// The header says the data is longer than the file is (a truncated copy).
    Truncated { needs: u64, has: u64 },
    /// A tensor the model has is in no file.
    Missing { expected_shape: Vec<usize> },
    /// A tensor the model does not have (renamed, or from another model).
    Unexpected,
    /// A tensor of another shape.
    Shape {
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor that is not a float one.
    Dtype { found: String },
    /// A tensor present in two files.
    Duplicate { other: PathBuf },
    /// The LoRA adapts another number of layers than the model's.
    LoraCount { found: usize, expected: usize },
    /// A config or tokenizer the engine refuses, or an inconsistent entry.
    Invalid { message: String },
}

/// One problem, with the file and (for tensors) the key.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub component: Component,
    pub file: PathBuf,
    pub key: Option<String>,
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.component, self.file.display())?;
        if let Some(key) = &self.key {
            write!(f, ": `{key}`")?;
        }
        match &self.kind {
            ProblemKind::MissingFile => write!(f, ": file not found"),
            ProblemKind::Unreadable { message } => write!(f, ": cannot read: {message}"),
            ProblemKind::Truncated { needs, has } => write!(
                f,
                ": truncated: the header describes {needs} bytes, the file has {has}"
            ),
            ProblemKind::Missing { expected_shape } => {
                write!(f, ": missing (the model expects shape {expected_shape:?})")
            }
            ProblemKind::Unexpected => write!(f, ": not a tensor of the model (renamed, or from another model?)"),
            ProblemKind::Shape { expected, found } => {
                write!(f, ": shape {found:?}, the model expects {expected:?}")
            }
            ProblemKind::Dtype { found } => {
                write!(f, ": stored as {found}; the model's parameters are floats")
            }
            ProblemKind::Duplicate { other } => write!(f, ": also in {}", other.display()),
            ProblemKind::LoraCount { found, expected } => write!(
                f,
                ": adapts {found} linear layers ({} tensors); Live Avatar's LoRA adapts {expected} ({} tensors)",
                2 * found,
                2 * expected
            ),
            ProblemKind::Invalid { message } => write!(f, ": {message}"),
        }
    }
}

/// What was checked of one component.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub component: Component,
    pub files: Vec<PathBuf>,
    /// Tensors found in the files' headers.
    pub tensors: usize,
}

/// The result of [`check_release`].
#[derive(Debug, Clone, PartialEq)]
pub struct CheckReport {
    pub dir: PathBuf,
    pub problems: Vec<Problem>,
    pub checked: Vec<Checked>,
    /// What could not be checked, and files present that the engine does not read.
    pub notes: Vec<String>,
}

impl CheckReport {
    /// No problem found: the directory loads as far as headers can tell.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems of one component.
    pub fn of(&self, component: Component) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(move |p| p.component == component)
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checked {
            writeln!(
                f,
                "{}: {} tensors in {} file(s)",
                c.component,
                c.tensors,
                c.files.len()
            )?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        if self.is_ok() {
            writeln!(f, "{}: no problem found", self.dir.display())
        } else {
            writeln!(
                f,
                "{}: {} problem(s)",
                self.dir.display(),
                self.problems.len()
            )
        }
    }
}

/// One tensor as a header describes it.
#[derive(Debug, Clone)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
}

/// Bytes per element of a safetensors dtype name.
fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "F8_E4M3" | "F8_E5M2" | "I8" | "U8" | "BOOL" => 1,
        _ => return None,
    })
}

fn is_float_name(dtype: &str) -> bool {
    matches!(dtype, "F64" | "F32" | "F16" | "BF16")
}

/// Largest header accepted (the real shards' are ~100 KB).
const MAX_HEADER: u64 = 100 << 20;

/// Reads a safetensors file's header: its tensors, and checks each entry's byte range and
/// the file's length against it.
fn read_header(path: &Path) -> Result<BTreeMap<String, Entry>, ProblemKind> {
    let unreadable = |message: String| ProblemKind::Unreadable { message };
    let mut f = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let has = f.metadata().map_err(|e| unreadable(e.to_string()))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| unreadable("shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER {
        return Err(unreadable(format!("header length {n} is not plausible")));
    }
    if 8 + n > has {
        return Err(ProblemKind::Truncated { needs: 8 + n, has });
    }
    let mut text = vec![0u8; n as usize];
    f.read_exact(&mut text)
        .map_err(|e| unreadable(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| unreadable(format!("header: {e}")))?;
    let obj = json
        .as_object()
        .ok_or_else(|| unreadable("header is not a JSON object".into()))?;
    let mut out = BTreeMap::new();
    let mut end = 0u64;
    for (key, v) in obj {
        if key == "__metadata__" {
            continue;
        }
        let bad = |what: &str| unreadable(format!("header entry `{key}`: {what}"));
        let dtype = v
            .get("dtype")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| bad("no dtype"))?
            .to_string();
        let shape: Vec<usize> = v
            .get("shape")
            .and_then(serde_json::Value::as_array)
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
            .ok_or_else(|| bad("no shape"))?;
        let offsets: Vec<u64> = v
            .get("data_offsets")
            .and_then(serde_json::Value::as_array)
            .and_then(|a| a.iter().map(serde_json::Value::as_u64).collect())
            .ok_or_else(|| bad("no data_offsets"))?;
        let [begin, stop] = offsets[..] else {
            return Err(bad("data_offsets must be two numbers"));
        };
        let size = dtype_size(&dtype).ok_or_else(|| bad(&format!("unknown dtype {dtype}")))?;
        let elems: u64 = shape.iter().map(|&d| d as u64).product();
        if stop < begin || stop - begin != elems * size {
            return Err(bad(&format!(
                "{} bytes for {dtype} {shape:?} ({} expected)",
                stop.saturating_sub(begin),
                elems * size
            )));
        }
        end = end.max(stop);
        out.insert(key.clone(), Entry { dtype, shape });
    }
    if 8 + n + end > has {
        return Err(ProblemKind::Truncated {
            needs: 8 + n + end,
            has,
        });
    }
    Ok(out)
}

/// A torch pickle's tensor records (names, shapes, dtypes; no data read).
fn read_pickle(path: &Path) -> Result<BTreeMap<String, Entry>, ProblemKind> {
    let mut store = PytorchStore::from_file(path)
        .allow_partial(true)
        .validate(false)
        .skip_enum_variants(true)
        .map_indices_contiguous(false);
    let snapshots = store
        .get_all_snapshots()
        .map_err(|e| ProblemKind::Unreadable {
            message: e.to_string(),
        })?;
    Ok(snapshots
        .iter()
        .map(|(k, s)| {
            let dtype = match s.dtype {
                burn::tensor::DType::F64 => "F64".to_string(),
                burn::tensor::DType::F32 => "F32".to_string(),
                burn::tensor::DType::F16 => "F16".to_string(),
                burn::tensor::DType::BF16 => "BF16".to_string(),
                other => format!("{other:?}"),
            };
            (
                k.clone(),
                Entry {
                    dtype,
                    shape: s.shape.to_vec(),
                },
            )
        })
        .collect())
}

/// Reads `path` as safetensors or a pickle by its extension.
fn read_tensors(path: &Path) -> Result<BTreeMap<String, Entry>, ProblemKind> {
    if !path.exists() {
        return Err(ProblemKind::MissingFile);
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        read_header(path)
    } else {
        read_pickle(path)
    }
}

/// Keys and shapes of a lazily built module (nothing allocated).
fn expected_of<M: burn::module::Module<NdArray>>(m: &M) -> BTreeMap<String, Vec<usize>> {
    list_params::<NdArray, _>(m)
        .into_iter()
        .map(|p| (p.key, p.shape))
        .collect()
}

struct Checker {
    report: CheckReport,
}

impl Checker {
    fn problem(&mut self, component: Component, file: &Path, key: Option<&str>, kind: ProblemKind) {
        self.report.problems.push(Problem {
            component,
            file: file.to_path_buf(),
            key: key.map(str::to_string),
            kind,
        });
    }

    /// Compares found tensors (key → file, entry) with the expected ones.
    fn compare(
        &mut self,
        component: Component,
        expected: &BTreeMap<String, Vec<usize>>,
        found: &BTreeMap<String, (PathBuf, Entry)>,
        missing_in: &Path,
    ) {
        for (key, (file, entry)) in found {
            match expected.get(key) {
                None => self.problem(component, file, Some(key), ProblemKind::Unexpected),
                Some(shape) if *shape != entry.shape => self.problem(
                    component,
                    file,
                    Some(key),
                    ProblemKind::Shape {
                        expected: shape.clone(),
                        found: entry.shape.clone(),
                    },
                ),
                Some(_) if !is_float_name(&entry.dtype) => self.problem(
                    component,
                    file,
                    Some(key),
                    ProblemKind::Dtype {
                        found: entry.dtype.clone(),
                    },
                ),
                Some(_) => {}
            }
        }
        for (key, shape) in expected {
            if !found.contains_key(key) {
                self.problem(
                    component,
                    missing_in,
                    Some(key),
                    ProblemKind::Missing {
                        expected_shape: shape.clone(),
                    },
                );
            }
        }
    }

    /// Reads the files of one component into one key map (renamed by `rename`, `None` to
    /// skip a key), reporting unreadable files and duplicates.
    fn gather(
        &mut self,
        component: Component,
        files: &[PathBuf],
        rename: impl Fn(&str) -> Option<String>,
    ) -> BTreeMap<String, (PathBuf, Entry)> {
        let mut found: BTreeMap<String, (PathBuf, Entry)> = BTreeMap::new();
        let mut count = 0;
        for file in files {
            match read_tensors(file) {
                Err(kind) => self.problem(component, file, None, kind),
                Ok(tensors) => {
                    count += tensors.len();
                    for (key, entry) in tensors {
                        let Some(key) = rename(&key) else { continue };
                        if let Some((other, _)) = found.get(&key) {
                            let other = other.clone();
                            self.problem(
                                component,
                                file,
                                Some(&key),
                                ProblemKind::Duplicate { other },
                            );
                            continue;
                        }
                        found.insert(key, (file.clone(), entry));
                    }
                }
            }
        }
        self.report.checked.push(Checked {
            component,
            files: files.to_vec(),
            tensors: count,
        });
        found
    }

    fn file_of(&self, dir: &Path, safetensors: &str, pth: &str) -> PathBuf {
        let st = dir.join(safetensors);
        if st.exists() {
            st
        } else {
            dir.join(pth)
        }
    }

    fn dit(&mut self, s2v: &Path, cfg: &LiveAvatarConfig) {
        let index = s2v.join(S2V_INDEX);
        let files: Vec<PathBuf> = if index.exists() {
            let parsed = std::fs::read_to_string(&index)
                .map_err(|e| e.to_string())
                .and_then(|t| {
                    serde_json::from_str::<serde_json::Value>(&t).map_err(|e| e.to_string())
                });
            match parsed {
                Err(message) => {
                    self.problem(
                        Component::Dit,
                        &index,
                        None,
                        ProblemKind::Unreadable { message },
                    );
                    return;
                }
                Ok(json) => {
                    let Some(map) = json
                        .get("weight_map")
                        .and_then(serde_json::Value::as_object)
                    else {
                        self.problem(
                            Component::Dit,
                            &index,
                            None,
                            ProblemKind::Invalid {
                                message: "no `weight_map` object".into(),
                            },
                        );
                        return;
                    };
                    let mut names: Vec<String> = map
                        .values()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .filter(|f| !f.contains('/') && !f.contains(".."))
                        .collect();
                    names.sort();
                    names.dedup();
                    names.into_iter().map(|n| s2v.join(n)).collect()
                }
            }
        } else {
            vec![s2v.join(S2V_SINGLE)]
        };
        let expected = expected_of(&WanS2v::<NdArray>::new(&cfg.s2v, &Default::default()));
        let found = self.gather(Component::Dit, &files, |k| Some(k.to_string()));
        self.compare(Component::Dit, &expected, &found, s2v);
    }

    fn single(
        &mut self,
        component: Component,
        file: &Path,
        expected: &BTreeMap<String, Vec<usize>>,
    ) {
        let found = self.gather(component, &[file.to_path_buf()], |k| Some(k.to_string()));
        if file.exists() {
            self.compare(component, expected, &found, file);
        }
    }

    fn wav2vec2(&mut self, dir: &Path, cfg: &LiveAvatarConfig) {
        let config = dir.join("config.json");
        let w2v = match Wav2Vec2Config::from_json_file(&config) {
            Ok(c) => c,
            Err(e) => {
                let kind = if config.exists() {
                    ProblemKind::Invalid {
                        message: e.to_string(),
                    }
                } else {
                    ProblemKind::MissingFile
                };
                self.problem(Component::Wav2vec2, &config, None, kind);
                return;
            }
        };
        let states = w2v.num_hidden_layers + 1;
        if states != cfg.s2v.audio_layers || w2v.hidden_size != cfg.s2v.audio_dim {
            self.problem(
                Component::Wav2vec2,
                &config,
                None,
                ProblemKind::Invalid {
                    message: format!(
                        "gives {states} hidden states of width {}; the DiT's audio encoder takes {} of width {}",
                        w2v.hidden_size, cfg.s2v.audio_layers, cfg.s2v.audio_dim
                    ),
                },
            );
        }
        let pre = dir.join("preprocessor_config.json");
        match std::fs::read_to_string(&pre) {
            Err(_) => self.report.notes.push(format!(
                "{}: not there; the engine normalises the waveform as the release's does (do_normalize: true)",
                pre.display()
            )),
            Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Err(e) => self.problem(
                    Component::Wav2vec2,
                    &pre,
                    None,
                    ProblemKind::Unreadable { message: e.to_string() },
                ),
                Ok(v) => {
                    if v.get("do_normalize").and_then(serde_json::Value::as_bool) == Some(false) {
                        self.problem(
                            Component::Wav2vec2,
                            &pre,
                            Some("do_normalize"),
                            ProblemKind::Invalid {
                                message: "is false; this engine always normalises the waveform (the release's setting)".into(),
                            },
                        );
                    }
                }
            },
        }
        let st = dir.join(W2V_SAFETENSORS);
        let file = if st.exists() { st } else { dir.join(W2V_BIN) };
        if file.exists() && dir.join(W2V_SAFETENSORS).exists() && dir.join(W2V_BIN).exists() {
            self.report.notes.push(format!(
                "{}: not read (the engine reads {W2V_SAFETENSORS})",
                dir.join(W2V_BIN).display()
            ));
        }
        let expected = expected_of(&Wav2Vec2Model::<NdArray>::new(&w2v, &Default::default()));
        let found = self.gather(
            Component::Wav2vec2,
            std::slice::from_ref(&file),
            crate::wav2vec2::model_key,
        );
        if file.exists() {
            self.compare(Component::Wav2vec2, &expected, &found, &file);
        }
    }

    fn lora(&mut self, dir: &Path, cfg: &LiveAvatarConfig) {
        let file = match find_lora(dir) {
            Ok(f) => f,
            Err(e) => {
                let (path, kind) = match e {
                    crate::error::WanError::Io { path, source }
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        (path, ProblemKind::MissingFile)
                    }
                    crate::error::WanError::Io { path, source } => (
                        path,
                        ProblemKind::Invalid {
                            message: source.to_string(),
                        },
                    ),
                    other => (
                        dir.to_path_buf(),
                        ProblemKind::Invalid {
                            message: other.to_string(),
                        },
                    ),
                };
                self.problem(Component::Lora, &path, None, kind);
                return;
            }
        };
        let tensors = match read_tensors(&file) {
            Ok(t) => t,
            Err(kind) => {
                self.problem(Component::Lora, &file, None, kind);
                return;
            }
        };
        self.report.checked.push(Checked {
            component: Component::Lora,
            files: vec![file.clone()],
            tensors: tensors.len(),
        });
        // The shapes of the layers Live Avatar's LoRA adapts.
        let mut model = WanS2v::<NdArray>::new(&cfg.s2v, &Default::default());
        let mut shapes: BTreeMap<String, [usize; 2]> = BTreeMap::new();
        for (p, l) in model.resident_linears_mut() {
            shapes.insert(p, l.shape());
        }
        for (n, b) in model.blocks.iter_mut().enumerate() {
            for (p, l) in b.linears_mut() {
                shapes.insert(format!("blocks.{n}.{p}"), l.shape());
            }
        }
        let targets = lora_targets(&cfg.s2v);
        // Spell the expected keys like the file does (peft prefix and adapter name or not).
        let sample = tensors.keys().next().cloned().unwrap_or_default();
        let prefix = if sample.starts_with("base_model.model.") {
            "base_model.model."
        } else {
            ""
        };
        let adapter = if sample.contains(".default.weight") {
            ".default"
        } else {
            ""
        };
        let mut pairs: BTreeMap<String, [Option<(String, Entry)>; 2]> = BTreeMap::new();
        for (key, entry) in &tensors {
            match crate::lora::parse_key(key) {
                Some((module, is_a)) if targets.contains(&module) => {
                    pairs.entry(module).or_default()[usize::from(!is_a)] =
                        Some((key.clone(), entry.clone()));
                }
                _ => self.problem(Component::Lora, &file, Some(key), ProblemKind::Unexpected),
            }
        }
        let mut complete = 0;
        for module in &targets {
            let [out, fan_in] = shapes[module];
            let pair = pairs.get(module);
            let a = pair.and_then(|p| p[0].as_ref());
            let b = pair.and_then(|p| p[1].as_ref());
            let rank = a
                .and_then(|(_, e)| e.shape.first().copied())
                .or_else(|| b.and_then(|(_, e)| e.shape.get(1).copied()))
                .unwrap_or(0);
            for (half, got, want) in [
                ("lora_A", a, vec![rank, fan_in]),
                ("lora_B", b, vec![out, rank]),
            ] {
                match got {
                    None => self.problem(
                        Component::Lora,
                        &file,
                        Some(&format!("{prefix}{module}.{half}{adapter}.weight")),
                        ProblemKind::Missing {
                            expected_shape: want,
                        },
                    ),
                    Some((key, e)) if e.shape != want => self.problem(
                        Component::Lora,
                        &file,
                        Some(key),
                        ProblemKind::Shape {
                            expected: want,
                            found: e.shape.clone(),
                        },
                    ),
                    Some((key, e)) if !is_float_name(&e.dtype) => self.problem(
                        Component::Lora,
                        &file,
                        Some(key),
                        ProblemKind::Dtype {
                            found: e.dtype.clone(),
                        },
                    ),
                    Some(_) => {}
                }
            }
            if a.is_some() && b.is_some() {
                complete += 1;
            }
        }
        if complete != targets.len() {
            self.problem(
                Component::Lora,
                &file,
                None,
                ProblemKind::LoraCount {
                    found: complete,
                    expected: targets.len(),
                },
            );
        }
    }

    fn tokenizer(&mut self, dir: &Path) {
        let tdir = dir.join(TOKENIZER_DIR);
        for optional in ["spiece.model", "special_tokens_map.json"] {
            if !tdir.join(optional).exists() {
                self.report.notes.push(format!(
                    "{}: not there (the engine does not read it)",
                    tdir.join(optional).display()
                ));
            }
        }
        if let Err(e) = crate::tokenizer::UmT5Tokenizer::from_dir(&tdir) {
            let kind = if tdir.join("tokenizer.json").exists() {
                ProblemKind::Invalid {
                    message: e.to_string(),
                }
            } else {
                ProblemKind::MissingFile
            };
            let file = if tdir.join("tokenizer.json").exists() {
                tdir.clone()
            } else {
                tdir.join("tokenizer.json")
            };
            self.problem(Component::Tokenizer, &file, None, kind);
        }
    }
}

/// Checks the model directory `dir` from headers and configs alone (see the module docs).
/// Never loads a weight; reports every problem found.
pub fn check_release(dir: &Path) -> CheckReport {
    let mut c = Checker {
        report: CheckReport {
            dir: dir.to_path_buf(),
            problems: Vec::new(),
            checked: Vec::new(),
            notes: Vec::new(),
        },
    };
    let s2v = dir.join(S2V_DIR);
    let config_path = s2v.join(CONFIG_FILE);
    let cfg = match LiveAvatarConfig::from_dir(dir) {
        Ok(cfg) => cfg,
        Err(e) => {
            let kind = if config_path.exists() {
                ProblemKind::Invalid {
                    message: e.to_string(),
                }
            } else {
                ProblemKind::MissingFile
            };
            c.problem(Component::Config, &config_path, None, kind);
            c.report.notes.push(
                "the tensors were checked against the release's configuration (config.json could not be used)".into(),
            );
            LiveAvatarConfig::release()
        }
    };
    c.dit(&s2v, &cfg);
    let device = Default::default();
    let vae = c.file_of(&s2v, VAE_SAFETENSORS, VAE_PTH);
    c.single(
        Component::Vae,
        &vae,
        &expected_of(&WanVae::<NdArray>::new(&cfg.vae, &device)),
    );
    let t5 = c.file_of(&s2v, T5_SAFETENSORS, T5_PTH);
    c.single(
        Component::Umt5,
        &t5,
        &expected_of(&T5Encoder::<NdArray>::new(&cfg.t5, &device)),
    );
    for (file, what) in [(&vae, "VAE"), (&t5, "umT5")] {
        if file.exists() && file.extension().is_some_and(|e| e == "pth") {
            c.report.notes.push(format!(
                "{}: {what} pickle: names, shapes and dtypes checked from its records; whether every tensor's bytes are complete is found only when it loads",
                file.display()
            ));
        }
    }
    c.wav2vec2(&s2v.join(W2V_DIR), &cfg);
    c.lora(dir, &cfg);
    c.tokenizer(dir);
    c.report
}
