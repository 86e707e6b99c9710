//! The top-level modules of `src/` depend downwards only (DESIGN.md, "Layout"):
//! api -> service -> (automation, notifications, analytics) -> rules -> store -> model, with
//! no import cycles between any two top-level modules. The graph is read from
//! the sources: every `crate::NAME` (and every name in `crate::{...}`) in a
//! module's files is an edge from that module to `NAME`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The named layers, lowest first; a module may import one of a lower layer or
/// of its own (which the acyclicity check then keeps one-way).
const LAYERS: [&[&str]; 6] = [
    &["model"],
    &["store"],
    &["rules"],
    &["automation", "notifications", "analytics"],
    &["service"],
    &["api"],
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for entry in entries {
            rust_files(&entry, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_owned());
    }
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level names `source` reaches through `crate::`.
fn crate_paths(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (at, _) in source.match_indices("crate::") {
        let before = source[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // `parleyd_crate::`, not ours
        }
        let rest = &source[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::X, b}`: the names at depth one.
            let mut depth = 0;
            let mut start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && !c.is_whitespace() => {
                        names.insert(ident_at(&group[i..]).to_owned());
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            names.insert(ident_at(rest).to_owned());
        }
    }
    names
}

fn module_graph(src: &Path) -> Graph {
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "lib" || name == "main" {
            continue;
        }
        if path.is_dir() || path.extension().is_some_and(|e| e == "rs") {
            modules.insert(name, path);
        }
    }
    let mut graph = Graph::new();
    for (name, path) in &modules {
        let mut files = Vec::new();
        rust_files(path, &mut files);
        let mut uses = BTreeSet::new();
        for file in files {
            let source = std::fs::read_to_string(&file).unwrap();
            uses.extend(
                crate_paths(&source)
                    .into_iter()
                    .filter(|m| m != name && modules.contains_key(m)),
            );
        }
        graph.insert(name.clone(), uses);
    }
    graph
}

/// A cycle of `graph`, as the modules along it (first repeated at the end).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit<'a>(
        graph: &'a Graph,
        node: &'a str,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|n| n.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(graph, next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(graph, node, &mut Vec::new(), &mut done))
}

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn top_level_modules_import_each_other_without_cycles() {
    let graph = module_graph(&src());
    assert!(graph.contains_key("store") && graph["api"].contains("service"));
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between top-level modules: {}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn layers_import_downwards_only() {
    let graph = module_graph(&src());
    let upwards: Vec<String> = graph
        .iter()
        .flat_map(|(from, uses)| uses.iter().map(move |to| (from, to)))
        .filter(|(from, to)| matches!((layer(from), layer(to)), (Some(a), Some(b)) if a < b))
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    assert!(
        upwards.is_empty(),
        "imports against DESIGN.md's direction: {upwards:?}"
    );
}

#[test]
fn the_scanner_sees_grouped_imports_and_finds_cycles() {
    let names = crate_paths("use crate::{a::X, b};\nlet c = crate::c::f();\nmy_crate::d");
    assert_eq!(names, BTreeSet::from(["a".into(), "b".into(), "c".into()]));
    let graph: Graph = [("x", "y"), ("y", "z"), ("z", "x")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), BTreeSet::from([b.to_owned()])))
        .collect();
    assert_eq!(find_cycle(&graph).unwrap().join(" -> "), "x -> y -> z -> x");
}
