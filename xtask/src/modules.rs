//! The module graph of `mmap-trace/src`: which of its folder and file modules (`kernel/`,
//! `trace.rs`, …) imports which, read from the `crate::…` paths in their sources (`use
//! crate::{a::b, c}` trees included, comments left out). `cargo xtask lint` prints it and
//! fails on a cycle: data flows one way, from the kernel through the model and the
//! records to the commands, and a module importing one that imports it back is where
//! that would start to reach back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context as _, Result};

/// Module → the modules it imports.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// The graph of the crate whose sources are in `src` (the crate root's own files,
/// lib.rs and main.rs, are not modules of it).
pub fn graph(src: &Path) -> Result<Graph> {
    let mut sources: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        let Some(name) = path.file_stem().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        if path.is_dir() {
            for file in rust_files(&path)? {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                sources.push((name.clone(), text));
            }
        } else if path.extension().is_some_and(|e| e == "rs") && name != "lib" && name != "main" {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            sources.push((name, text));
        }
    }
    let modules: BTreeSet<String> = sources.iter().map(|(m, _)| m.clone()).collect();
    let mut graph: Graph = modules
        .iter()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    for (module, text) in &sources {
        let imported = crate_imports(text)
            .into_iter()
            .filter(|name| name != module && modules.contains(name));
        graph.entry(module.clone()).or_default().extend(imported);
    }
    Ok(graph)
}

fn rust_files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(files)
}

/// The first segment of every `crate::` path in `text`: `crate::a::b` gives `a`,
/// `crate::{a::b, c::{d, e}}` gives `a` and `c`.
pub fn crate_imports(text: &str) -> BTreeSet<String> {
    let code = without_comments(text);
    let mut names = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        // `$crate::` or a longer name ending in `crate`: not this crate's path.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(tree) = rest.strip_prefix('{') {
            names.extend(tree_heads(tree));
        } else {
            names.extend(ident(rest).map(str::to_owned));
        }
    }
    names
}

/// The first segment of each top-level item of a `{…}` use tree (`tree` starts after
/// the brace).
fn tree_heads(tree: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && !c.is_whitespace() => {
                item_start = false;
                heads.extend(ident(&tree[i..]).map(str::to_owned));
            }
            _ => {}
        }
    }
    heads
}

fn ident(text: &str) -> Option<&str> {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

/// `text` without `//` and `/* */` comments (doc comments name modules too).
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let line = rest.find("//");
        let block = rest.find("/*");
        match (line, block) {
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |end| &rest[l + end..]);
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                rest = rest[b..].find("*/").map_or("", |end| &rest[b + end + 2..]);
            }
            (None, None) => {
                out.push_str(rest);
                return out;
            }
            (Some(_), None) => unreachable!("handled by the first arm"),
        }
    }
}

/// A cycle of the graph, as the modules along it (the first again at the end), if any.
pub fn cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Seen {
        Open,
        Done,
    }
    fn visit(
        graph: &Graph,
        module: &str,
        seen: &mut BTreeMap<String, Seen>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match seen.get(module) {
            Some(Seen::Done) => return None,
            Some(Seen::Open) => {
                let from = path.iter().position(|m| m == module).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(module.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        seen.insert(module.to_owned(), Seen::Open);
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(graph, next, seen, path) {
                return Some(cycle);
            }
        }
        path.pop();
        seen.insert(module.to_owned(), Seen::Done);
        None
    }
    let mut seen = BTreeMap::new();
    graph
        .keys()
        .find_map(|m| visit(graph, m, &mut seen, &mut Vec::new()))
}

/// `a -> b, c` per module, for the lint's output.
pub fn describe(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(module, imports)| {
            let imports: Vec<&str> = imports.iter().map(String::as_str).collect();
            format!("{module:>8} -> {}\n", imports.join(", "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_paths_trees_and_skips_comments() {
        let text = "//! Uses `crate::verify` in prose only.\n\
            use crate::{\n    kernel::decode::{self, Event},\n    output::{Format, json::Hex},\n    schema,\n};\n\
            fn f() { crate::space::maps::read(1); /* crate::report */ $crate::x(); }\n\
            use my_crate::thing; // crate::cli\n";
        let names: Vec<String> = crate_imports(text).into_iter().collect();
        assert_eq!(names, ["kernel", "output", "schema", "space"]);
    }

    #[test]
    fn finds_a_cycle_and_passes_a_chain() {
        let edges = |pairs: &[(&str, &str)]| {
            let mut g = Graph::new();
            for (a, b) in pairs {
                g.entry(a.to_string()).or_default().insert(b.to_string());
                g.entry(b.to_string()).or_default();
            }
            g
        };
        let chain = edges(&[("cli", "trace"), ("trace", "output"), ("output", "schema")]);
        assert_eq!(cycle(&chain), None);
        let looped = edges(&[
            ("cli", "output"),
            ("output", "verify"),
            ("verify", "output"),
        ]);
        assert_eq!(
            cycle(&looped).unwrap(),
            ["output", "verify", "output"].map(String::from)
        );
    }

    /// The real tree has no cycle (the lint says so too, with the graph).
    #[test]
    fn mmap_trace_has_no_import_cycle() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mmap-trace/src");
        let graph = graph(&src).unwrap();
        assert!(graph.contains_key("kernel") && graph.contains_key("trace"));
        assert_eq!(cycle(&graph), None, "\n{}", describe(&graph));
    }
}
