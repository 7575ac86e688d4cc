//! The daemon's layers, checked: the file-level import graph of `daemon/src`.
//!
//! Every `use` and every path in the code that starts with `crate::`, `super::`, `self::` or
//! the name of a child module (`mod x;`) is an edge from the file it is written in to the file
//! that defines the module it names. Two checks run on that graph:
//! - no import cycle spans more than two files (a parent and its child module may name each
//!   other; anything longer means two ideas have grown into one);
//! - no file imports from a layer above its own, the layers being the list in the crate's
//!   root docs (`main.rs`, "Layers"), so those docs cannot drift from the code.
//!
//! The source is read with a small tokenizer (comments, strings and character literals are
//! skipped), not a Rust parser: it only has to find paths, and it errs towards seeing an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One token of Rust source, as far as paths are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    PathSep,
    Open(char),
    Close(char),
    Punct(char),
}

/// Splits source into tokens, dropping comments, string and character literals, lifetimes and
/// numbers.
fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            _ if c.is_whitespace() => i += 1,
            '/' if next == Some('/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if next == Some('*') => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            '"' => i = skip_string(&chars, i),
            '\'' => i = skip_char_or_lifetime(&chars, i),
            _ if c.is_ascii_digit() => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            _ if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                match (word.as_str(), chars.get(i)) {
                    // Raw and byte strings: r"..", r#".."#, b"..", br#".."#; byte chars b'x'.
                    ("r" | "br" | "b", Some('"' | '#')) if raw_string_at(&chars, i) => {
                        i = skip_raw_string(&chars, i);
                    }
                    ("b", Some('"')) => i = skip_string(&chars, i),
                    ("b", Some('\'')) => i = skip_char_or_lifetime(&chars, i),
                    _ => tokens.push(Token::Ident(word)),
                }
            }
            ':' if next == Some(':') => {
                tokens.push(Token::PathSep);
                i += 2;
            }
            '{' | '(' | '[' => {
                tokens.push(Token::Open(c));
                i += 1;
            }
            '}' | ')' | ']' => {
                tokens.push(Token::Close(c));
                i += 1;
            }
            _ => {
                tokens.push(Token::Punct(c));
                i += 1;
            }
        }
    }
    tokens
}

/// Whether `chars[at..]` opens a raw string (`"` or `#..#"`).
fn raw_string_at(chars: &[char], at: usize) -> bool {
    let mut i = at;
    while chars.get(i) == Some(&'#') {
        i += 1;
    }
    chars.get(i) == Some(&'"')
}

/// Skips a raw string whose hashes (if any) start at `at`; returns the index after it.
fn skip_raw_string(chars: &[char], at: usize) -> usize {
    let mut hashes = 0;
    let mut i = at;
    while chars.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    i += 1; // the opening quote
    while i < chars.len() {
        if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

/// Skips a string literal opening at `at`; returns the index after it.
fn skip_string(chars: &[char], at: usize) -> usize {
    let mut i = at + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Skips a character literal (`'x'`, `'\n'`, `'{'`) or a lifetime (`'a`) opening at `at`.
fn skip_char_or_lifetime(chars: &[char], at: usize) -> usize {
    match (chars.get(at + 1), chars.get(at + 2)) {
        (Some('\\'), _) => {
            let mut i = at + 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i + 1
        }
        (Some(_), Some('\'')) => at + 3,
        _ => {
            let mut i = at + 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            i
        }
    }
}

/// What one file names: the paths it uses, each with the module it is written in (the file's
/// own module, or an inline module inside it such as `mod tests`), and the modules it declares.
#[derive(Debug, Default)]
struct FilePaths {
    /// (the module path the path is written in, the path's segments)
    paths: Vec<(Vec<String>, Vec<String>)>,
    /// Inline modules (`mod name { .. }`), as module paths.
    inline_modules: Vec<Vec<String>>,
    /// Child modules declared with `mod name;`.
    children: BTreeSet<String>,
}

/// Collects the paths of one file whose module path is `module`.
fn collect_paths(source: &str, module: &[String]) -> FilePaths {
    let tokens = tokenize(source);
    let mut found = FilePaths::default();
    // Inline modules entered, with the brace depth their body opened at.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let here = module_path(module, &inline);
        match &tokens[i] {
            Token::Open('{') => {
                depth += 1;
                i += 1;
            }
            Token::Close('}') => {
                if inline.last().is_some_and(|(_, at)| *at == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Token::Ident(word) if word == "mod" => {
                if let Some(Token::Ident(name)) = tokens.get(i + 1) {
                    match tokens.get(i + 2) {
                        Some(Token::Open('{')) => {
                            let mut path = here;
                            path.push(name.clone());
                            found.inline_modules.push(path);
                            depth += 1;
                            inline.push((name.clone(), depth));
                            i += 3;
                            continue;
                        }
                        Some(Token::Punct(';')) if inline.is_empty() => {
                            found.children.insert(name.clone());
                        }
                        _ => {}
                    }
                }
                i += 1;
            }
            Token::Ident(word) if word == "use" => {
                i += 1;
                if tokens.get(i) == Some(&Token::PathSep) {
                    i += 1;
                }
                let mut trees = Vec::new();
                use_tree(&tokens, &mut i, Vec::new(), &mut trees);
                let at = here;
                found
                    .paths
                    .extend(trees.into_iter().map(|path| (at.clone(), path)));
            }
            Token::Ident(first)
                if tokens.get(i + 1) == Some(&Token::PathSep)
                    && (i == 0 || tokens[i - 1] != Token::PathSep) =>
            {
                let mut path = vec![first.clone()];
                let mut j = i + 1;
                while tokens.get(j) == Some(&Token::PathSep) {
                    match tokens.get(j + 1) {
                        Some(Token::Ident(segment)) => {
                            path.push(segment.clone());
                            j += 2;
                        }
                        _ => break,
                    }
                }
                found.paths.push((here, path));
                i = j;
            }
            _ => i += 1,
        }
    }
    found
}

/// The module path of the place `inline` modules deep inside the file of `module`.
fn module_path(module: &[String], inline: &[(String, usize)]) -> Vec<String> {
    let mut path = module.to_vec();
    path.extend(inline.iter().map(|(name, _)| name.clone()));
    path
}

/// Reads one use tree (`a::b`, `a::{b, c::d}`, `a::*`, `a as b`) from `tokens[*i..]`, pushing
/// every full path it names onto `out`.
fn use_tree(tokens: &[Token], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        match tokens.get(*i) {
            Some(Token::Ident(segment)) => {
                path.push(segment.clone());
                *i += 1;
                if tokens.get(*i) == Some(&Token::PathSep) {
                    *i += 1;
                    continue;
                }
                break;
            }
            Some(Token::Open('{')) => {
                *i += 1;
                while let Some(token) = tokens.get(*i) {
                    match token {
                        Token::Close('}') => {
                            *i += 1;
                            break;
                        }
                        Token::Punct(',') => *i += 1,
                        _ => {
                            let before = *i;
                            use_tree(tokens, i, path.clone(), out);
                            if *i == before {
                                *i += 1;
                            }
                        }
                    }
                }
                return;
            }
            Some(Token::Punct('*')) => {
                *i += 1;
                break;
            }
            _ => break,
        }
    }
    if tokens.get(*i) == Some(&Token::Ident("as".into())) {
        *i += 2;
    }
    if !path.is_empty() {
        out.push(path);
    }
}

/// The module path of a file under `src`: `main.rs` is the root, `a/mod.rs` and `a.rs` are `a`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap_or(file);
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" && !(parts.is_empty() && stem == "main") {
            parts.push(stem.to_string());
        }
    }
    parts
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()));
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The import graph: file (relative to `src`) to the files it imports from.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// Builds the file-level import graph of the sources under `src`.
fn import_graph(src: &Path) -> Graph {
    let files = rust_files(src);
    let name_of = |file: &Path| {
        file.strip_prefix(src)
            .unwrap_or(file)
            .to_string_lossy()
            .into_owned()
    };
    // Module path -> the file that holds it (a file's own module and its inline modules).
    let mut owner: BTreeMap<Vec<String>, String> = BTreeMap::new();
    let mut parsed = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", file.display()));
        let module = module_of(src, file);
        let paths = collect_paths(&source, &module);
        owner.insert(module.clone(), name_of(file));
        for inline in &paths.inline_modules {
            owner.insert(inline.clone(), name_of(file));
        }
        parsed.push((name_of(file), module, paths));
    }
    let mut graph = Graph::new();
    for (file, module, found) in &parsed {
        let edges = graph.entry(file.clone()).or_default();
        for (written_in, path) in &found.paths {
            let Some(target) = resolve(module, written_in, &found.children, path) else {
                continue;
            };
            // The longest module path that a file holds.
            let holder = (0..=target.len())
                .rev()
                .find_map(|len| owner.get(&target[..len]));
            if let Some(holder) = holder.filter(|holder| *holder != file) {
                edges.insert(holder.clone());
            }
        }
    }
    graph
}

/// The absolute module path a path written in module `written_in` (inside the file of module
/// `file_module`, which declares `children`) points at, or `None` for another crate's path.
fn resolve(
    file_module: &[String],
    written_in: &[String],
    children: &BTreeSet<String>,
    path: &[String],
) -> Option<Vec<String>> {
    let first = path.first()?;
    let mut target: Vec<String> = match first.as_str() {
        "crate" => Vec::new(),
        "self" => written_in.to_vec(),
        "super" => written_in.to_vec(),
        // A child module named without `self::` (only from the file's own module).
        name if written_in == file_module && children.contains(name) => {
            let mut target = file_module.to_vec();
            target.push(name.to_string());
            return Some(extend(target, &path[1..]));
        }
        _ => return None,
    };
    let mut rest = &path[1..];
    if first == "super" {
        target.pop()?;
        while rest.first().is_some_and(|segment| segment == "super") {
            target.pop()?;
            rest = &rest[1..];
        }
    }
    Some(extend(target, rest))
}

/// `base` followed by `rest`, less a trailing `self` (`use a::{self}`).
fn extend(mut base: Vec<String>, rest: &[String]) -> Vec<String> {
    base.extend(rest.iter().filter(|segment| *segment != "self").cloned());
    base
}

/// The strongly connected components of the graph (Tarjan), each sorted.
fn components(graph: &Graph) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, node: &'g str) {
            let at = self.index.len();
            self.index.insert(node, at);
            self.low.insert(node, at);
            self.stack.push(node);
            self.on_stack.insert(node);
            for next in self.graph.get(node).into_iter().flatten() {
                let next = next.as_str();
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.on_stack.contains(next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    self.on_stack.remove(member);
                    component.push(member.to_string());
                    if member == node {
                        break;
                    }
                }
                component.sort();
                self.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    walk.found.sort();
    walk.found
}

/// The layers as the root docs list them: items `//! N. name: `a`, `b`, ...` (top first),
/// whose module list may go on in lines indented under the item. Returns top-level module ->
/// layer number.
fn documented_layers(root_source: &str) -> BTreeMap<String, usize> {
    let mut items: Vec<(usize, String)> = Vec::new();
    for line in root_source.lines() {
        let Some(text) = line.trim_start().strip_prefix("//!") else {
            items.push((0, String::new()));
            continue;
        };
        let text = text.strip_prefix(' ').unwrap_or(text);
        let numbered = text
            .split_once(". ")
            .and_then(|(number, rest)| Some((number.parse::<usize>().ok()?, rest)));
        match numbered {
            Some((number, rest)) => match rest.split_once(':') {
                Some((_, modules)) => items.push((number, modules.to_string())),
                None => items.push((0, String::new())),
            },
            // A continuation of the item above.
            None if text.starts_with("   ") && !text.trim().is_empty() => {
                if let Some((_, modules)) = items.last_mut() {
                    modules.push_str(text);
                }
            }
            None => items.push((0, String::new())),
        }
    }
    let mut layers = BTreeMap::new();
    for (number, modules) in items.into_iter().filter(|(number, _)| *number > 0) {
        for name in modules.split('`').skip(1).step_by(2) {
            let previous = layers.insert(name.to_string(), number);
            assert!(
                previous.is_none(),
                "main.rs lists `{name}` in two layers ({} and {number})",
                previous.unwrap_or_default()
            );
        }
    }
    layers
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The graph as readable lines: `a.rs -> b.rs, c.rs`, for the files named.
fn edges_within(graph: &Graph, files: &[String]) -> String {
    files
        .iter()
        .map(|file| {
            let targets: Vec<&str> = graph[file]
                .iter()
                .filter(|target| files.contains(target))
                .map(String::as_str)
                .collect();
            format!("  {file} -> {}", targets.join(", "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_import_cycle_spans_more_than_two_files() {
    let graph = import_graph(&src_dir());
    assert!(graph.len() > 10, "too few files found: {graph:?}");
    let cycles: Vec<Vec<String>> = components(&graph)
        .into_iter()
        .filter(|component| component.len() > 1)
        .collect();
    for pair in cycles.iter().filter(|component| component.len() == 2) {
        println!("two-file cycle: {}", pair.join(" <-> "));
    }
    let large: Vec<String> = cycles
        .iter()
        .filter(|component| component.len() > 2)
        .map(|component| {
            format!(
                "{} files import each other in a cycle:\n{}",
                component.len(),
                edges_within(&graph, component)
            )
        })
        .collect();
    assert!(
        large.is_empty(),
        "the daemon's modules must not form an import cycle of more than two files \
         (move what both sides need into a module below them):\n{}",
        large.join("\n")
    );
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let src = src_dir();
    let root = std::fs::read_to_string(src.join("main.rs")).expect("main.rs is readable");
    let layers = documented_layers(&root);
    assert!(layers.len() > 5, "main.rs lists no layers: {layers:?}");
    for name in layers.keys() {
        assert!(
            src.join(format!("{name}.rs")).is_file() || src.join(name).join("mod.rs").is_file(),
            "main.rs lists `{name}` in a layer, but there is no such module"
        );
    }
    let graph = import_graph(&src);
    let layer_of = |file: &str| -> usize {
        if file == "main.rs" {
            return 0;
        }
        let top = file
            .split('/')
            .next()
            .unwrap_or(file)
            .trim_end_matches(".rs");
        *layers.get(top).unwrap_or_else(|| {
            panic!("`{top}` ({file}) is in no layer of main.rs's docs; add it to one")
        })
    };
    let upward: Vec<String> = graph
        .iter()
        .flat_map(|(file, targets)| targets.iter().map(move |target| (file, target)))
        .filter(|(file, target)| layer_of(target) < layer_of(file))
        .map(|(file, target)| {
            format!(
                "  {file} (layer {}) imports {target} (layer {})",
                layer_of(file),
                layer_of(target)
            )
        })
        .collect();
    assert!(
        upward.is_empty(),
        "a module may import only from its own layer or the layers below it \
         (main.rs, \"Layers\"):\n{}",
        upward.join("\n")
    );
}

#[test]
fn paths_are_found_in_uses_and_code_but_not_in_strings_or_comments() {
    let source = r##"
        use crate::{config::{self, DaemonConfig}, spool};
        use super::api::ApiError as Error;
        mod child;
        // crate::commented::out
        /* crate::block::comment */
        fn f<'a>(x: &'a str) -> char {
            let _ = "crate::in_a_string";
            let _ = r#"crate::in_a_raw_string"#;
            let _ = crate::executor::slurm::cancel_recorded(x);
            let _ = child::thing();
            let _ = jobs::state::now_ms();
            '{'
        }
        mod tests {
            use super::*;
            use crate::logs::WORKER_LOG;
        }
    "##;
    let module = vec!["http".to_string(), "dashboard".to_string()];
    let found = collect_paths(source, &module);
    let resolved: Vec<Vec<String>> = found
        .paths
        .iter()
        .filter_map(|(at, path)| resolve(&module, at, &found.children, path))
        .collect();
    let joined: Vec<String> = resolved.iter().map(|path| path.join("::")).collect();
    assert_eq!(
        joined,
        [
            "config",
            "config::DaemonConfig",
            "spool",
            "http::api::ApiError",
            "executor::slurm::cancel_recorded",
            "http::dashboard::child::thing",
            "http::dashboard",
            "logs::WORKER_LOG",
        ]
    );
    assert_eq!(
        found.inline_modules,
        vec![vec![
            "http".to_string(),
            "dashboard".to_string(),
            "tests".to_string()
        ]]
    );
}

#[test]
fn layers_are_read_from_numbered_items_and_their_continuation_lines() {
    let root = "//! Intro with `code`.\n//!\n//! 1. top: `cli`, `demo`\n//! 2. middle: `scheduler`,\n//!    `intake`\n//!\n//! - **Top** is `not_a_module`.\n";
    let layers = documented_layers(root);
    let expected: BTreeMap<String, usize> =
        [("cli", 1), ("demo", 1), ("scheduler", 2), ("intake", 2)]
            .into_iter()
            .map(|(name, layer)| (name.to_string(), layer))
            .collect();
    assert_eq!(layers, expected);
}

#[test]
fn a_cycle_of_three_is_one_component() {
    let mut graph = Graph::new();
    let mut edge = |from: &str, to: &str| {
        graph
            .entry(from.to_string())
            .or_default()
            .insert(to.to_string());
        graph.entry(to.to_string()).or_default();
    };
    edge("a", "b");
    edge("b", "c");
    edge("c", "a");
    edge("c", "d");
    edge("d", "e");
    edge("e", "d");
    let components = components(&graph);
    assert!(components.contains(&vec!["a".into(), "b".into(), "c".into()]));
    assert!(components.contains(&vec!["d".into(), "e".into()]));
}
