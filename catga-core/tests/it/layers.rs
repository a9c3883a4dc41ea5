//! The workspace's import graph: no file-level import circle in any crate,
//! and the dispatch layer of `catga-core` imports nothing of its runtime.
//!
//! Reads the `crate::`, `super::` and `self::` paths of every source file
//! (comments left out), resolves each to the file of its longest module
//! prefix, and looks for strongly connected files. A module file re-exporting
//! its own children (`mod.rs`, `lib.rs`) is a facade, not a dependency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (from the crate root) → file.
type Modules = BTreeMap<Vec<String>, PathBuf>;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("catga-core sits in the workspace")
        .to_path_buf()
}

/// The `src` folders of every crate of the workspace.
fn crates() -> Vec<PathBuf> {
    let root = workspace();
    let mut out = Vec::new();
    for dir in [root.clone(), root.join("samples")] {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let src = entry.path().join("src");
            if entry.path().join("Cargo.toml").exists() && src.is_dir() {
                out.push(src);
            }
        }
    }
    out.sort();
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file by its place under `src`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    match last.as_str() {
        "lib.rs" | "main.rs" | "mod.rs" => {}
        other => parts.push(other.trim_end_matches(".rs").to_owned()),
    }
    parts
}

/// Source without comments (line comments, doc comments, block comments).
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
            out.push('\n');
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
        } else if rest.starts_with('"') {
            // Skip string literals (they may hold `//`).
            let mut chars = rest.char_indices().skip(1);
            let mut end = rest.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        chars.next();
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            out.push_str("\"\"");
            rest = &rest[end..];
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn ident_len(s: &str) -> usize {
    s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// Every path a file names that starts at `crate`, `super` or `self`,
/// expanded through `{..}` groups, as module paths from the crate root.
fn paths_in(code: &str, here: &[String]) -> Vec<Vec<String>> {
    // `super` of a `foo.rs` or `foo/mod.rs` file is the parent of `foo`.
    let base_self: Vec<String> = here.to_vec();
    let mut out = Vec::new();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let prefix: Vec<String> = match start {
                "crate::" => Vec::new(),
                "super::" => {
                    let mut p = base_self.clone();
                    p.pop();
                    p
                }
                _ => base_self.clone(),
            };
            expand(&code[from..], prefix, &mut out);
        }
    }
    out
}

/// Reads `a::b::{c, d::e}` from the start of `s` into full paths.
fn expand(s: &str, mut prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut s = s;
    loop {
        let n = ident_len(s);
        if n == 0 {
            if let Some(group) = s.strip_prefix('{') {
                let mut depth = 1;
                let mut item_start = 0;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                expand(group[item_start..i].trim(), prefix.clone(), out);
                                return;
                            }
                        }
                        ',' if depth == 1 => {
                            expand(group[item_start..i].trim(), prefix.clone(), out);
                            item_start = i + 1;
                        }
                        _ => {}
                    }
                }
            }
            out.push(prefix);
            return;
        }
        let ident = &s[..n];
        if ident == "self" {
            out.push(prefix);
            return;
        }
        prefix.push(ident.to_owned());
        s = &s[n..];
        match s.strip_prefix("::") {
            Some(rest) => s = rest.trim_start(),
            None => {
                out.push(prefix);
                return;
            }
        }
    }
}

/// The file of the longest module prefix of `path`.
fn resolve<'a>(modules: &'a Modules, path: &[String]) -> Option<&'a PathBuf> {
    (0..=path.len()).rev().find_map(|n| modules.get(&path[..n]))
}

/// `#[path = "x.rs"] mod name;` declarations.
fn path_attributes(src: &Path, file: &Path, here: &[String], modules: &mut Modules) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("#[path = \"") else {
            continue;
        };
        let target = rest.trim_end_matches("\"]");
        for next in lines.by_ref() {
            let next = next.trim();
            if let Some(i) = next.find("mod ") {
                let name = &next[i + 4..];
                let name = &name[..ident_len(name)];
                let mut m = here.to_vec();
                m.push(name.to_owned());
                modules.insert(m, file.parent().unwrap_or(src).join(target));
                break;
            }
        }
    }
}

/// File-level import edges of one crate.
fn edges(src: &Path) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut modules = Modules::new();
    for f in &files {
        modules.insert(module_of(src, f), f.clone());
    }
    for f in &files {
        path_attributes(src, f, &module_of(src, f), &mut modules);
    }
    let module_by_file: BTreeMap<PathBuf, Vec<String>> = modules
        .iter()
        .map(|(m, f)| (f.clone(), m.clone()))
        .collect();
    let mut graph = BTreeMap::new();
    for f in &files {
        let here = module_by_file
            .get(f)
            .cloned()
            .unwrap_or_else(|| module_of(src, f));
        let text = code(&std::fs::read_to_string(f).unwrap());
        let mut to = BTreeSet::new();
        for path in paths_in(&text, &here) {
            let Some(target) = resolve(&modules, &path) else {
                continue;
            };
            let target_module = &module_by_file[target];
            // A module file naming its own descendants is their facade.
            let descendant = target_module.len() > here.len() && target_module.starts_with(&here);
            if target != f && !descendant {
                to.insert(target.clone());
            }
        }
        graph.insert(f.clone(), to);
    }
    graph
}

/// Strongly connected sets of more than one file (Tarjan).
fn circles(graph: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct State<'a> {
        graph: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on_stack: BTreeSet<&'a PathBuf>,
        next: usize,
        found: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a PathBuf) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut set = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                set.push(w.clone());
                if w == v {
                    break;
                }
            }
            if set.len() > 1 {
                s.found.push(set);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_crate_has_a_file_level_import_circle() {
    let mut all = Vec::new();
    for src in crates() {
        for circle in circles(&edges(&src)) {
            let names: Vec<_> = circle
                .iter()
                .map(|p| p.strip_prefix(workspace()).unwrap().display().to_string())
                .collect();
            all.push(names.join(" <-> "));
        }
    }
    assert!(all.is_empty(), "import circles:\n{}", all.join("\n"));
}

#[test]
fn the_dispatch_layer_imports_nothing_of_the_runtime() {
    let src = workspace().join("catga-core/src");
    let dispatch = src.join("dispatch");
    let runtime = src.join("runtime");
    let graph = edges(&src);
    let wrong: Vec<String> = graph
        .iter()
        .filter(|(from, _)| from.starts_with(&dispatch))
        .flat_map(|(from, to)| {
            to.iter()
                .filter(|t| t.starts_with(&runtime))
                .map(move |t| format!("{} -> {}", from.display(), t.display()))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "dispatch imports runtime:\n{}",
        wrong.join("\n")
    );
    // The check sees imports at all: the runtime does import dispatch.
    assert!(
        graph
            .iter()
            .any(|(from, to)| from.starts_with(&runtime)
                && to.iter().any(|t| t.starts_with(&dispatch))),
        "the graph is empty: the check reads nothing"
    );
}

/// The reader finds a circle where there is one.
#[test]
fn the_circle_check_sees_a_circle() {
    let dir = std::env::temp_dir().join(format!("catga-layers-{}", std::process::id()));
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a;\nmod b;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::{c::C, D};\n").unwrap();
    std::fs::write(src.join("b/mod.rs"), "pub mod c;\npub struct D;\n").unwrap();
    std::fs::write(
        src.join("b/c.rs"),
        "// use crate::nothing;\npub struct C(crate::a::A);\n",
    )
    .unwrap();
    let found = circles(&edges(&src));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].len(), 2, "a.rs and b/c.rs: {found:?}");
}
