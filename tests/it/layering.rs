//! The crate's files import each other without loops: every `use crate::…`, `crate::…`,
//! `super::…` and path through an imported module (`use crate::api; … api::jobs::get`) is an
//! edge from the file to the file that defines the module it names, and the graph must have no
//! cycle. Tests (`#[cfg(test)] mod tests` and `tests.rs` files) are left out: they may reach
//! anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`api::jobs`) → file, for every `.rs` file of the library.
fn module_files(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().unwrap() != "bin" {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            if name == "lib" || name == "main" || parts.last().is_some_and(|p| p == "tests") {
                continue;
            }
            out.insert(name, path);
        }
    }
    out
}

/// The longest prefix of `path` that is a module with a file.
fn resolve<'a>(files: &'a BTreeMap<String, PathBuf>, path: &str) -> Option<&'a str> {
    let segments: Vec<&str> = path.split("::").collect();
    (1..=segments.len()).rev().map(|n| segments[..n].join("::")).find_map(|p| files.get_key_value(&p).map(|(k, _)| k.as_str()))
}

/// `a::{b, c::{d, e}}` → `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else { return vec![tree.to_string()] };
    let (prefix, inner) = (&tree[..open], &tree[open + 1..tree.rfind('}').unwrap()]);
    let (mut items, mut depth, mut current) = (Vec::new(), 0, String::new());
    for c in inner.chars() {
        match c {
            ',' if depth == 0 => items.push(std::mem::take(&mut current)),
            _ => {
                depth += (c == '{') as i32 - (c == '}') as i32;
                current.push(c);
            }
        }
    }
    items.push(current);
    items.iter().filter(|i| !i.is_empty()).flat_map(|i| expand(&format!("{prefix}{i}"))).collect()
}

/// The paths `name::a::b…` in `code`, where `name` is not itself the tail of a longer path.
fn paths_after(code: &str, name: &str) -> Vec<String> {
    let needle = format!("{name}::");
    let mut out = Vec::new();
    for (at, _) in code.match_indices(&needle) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest: String = code[at + needle.len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        out.push(rest.trim_end_matches(':').to_string());
    }
    out
}

fn imports(module: &str, file: &Path, files: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    let code: String = text.lines().map(|l| l.split("//").next().unwrap()).collect::<Vec<_>>().join("\n");
    let parent = match module.rsplit_once("::") {
        Some((p, _)) => p.to_string(),
        None => String::new(),
    };
    // `super::` from `a/b.rs` and from `a/b/mod.rs` (both module a::b) means `a`.
    let mut deps = BTreeSet::new();
    let mut aliases = BTreeMap::new();
    for stmt in code.split("use crate::").skip(1) {
        let tree: String = stmt.split(';').next().unwrap().chars().filter(|c| !c.is_whitespace()).collect();
        for path in expand(&tree) {
            let path = path.split(" as ").next().unwrap().replace("::self", "");
            if let Some(target) = resolve(files, &path) {
                deps.insert(target.to_string());
                if target == path {
                    aliases.insert(path.rsplit("::").next().unwrap().to_string(), path.clone());
                }
            }
        }
    }
    for path in paths_after(&code, "crate") {
        deps.extend(resolve(files, &path).map(str::to_string));
    }
    for (alias, full) in &aliases {
        for path in paths_after(&code, alias) {
            deps.extend(resolve(files, &format!("{full}::{path}")).map(str::to_string));
        }
    }
    for path in paths_after(&code, "super") {
        let full = if parent.is_empty() { path } else { format!("{parent}::{path}") };
        deps.extend(resolve(files, &full).map(str::to_string));
    }
    deps.remove(module);
    deps
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let lw = s.low[w.as_str()];
                s.low.insert(v, s.low[v].min(lw));
            } else if s.on_stack.contains(w.as_str()) {
                let iw = s.index[w.as_str()];
                s.low.insert(v, s.low[v].min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on_stack: BTreeSet::new(), found: Vec::new() };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn crate_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = module_files(&src);
    files.iter().map(|(m, f)| (m.clone(), imports(m, f, &files))).collect()
}

#[test]
fn no_file_of_the_crate_imports_itself_through_others() {
    let graph = crate_graph();
    // The scan sees the request path's real edges (a wrong scan would pass vacuously).
    assert!(graph["routes"].contains("pipeline") && graph["routes"].contains("api::jobs"), "{:?}", graph["routes"]);
    assert!(graph["pipeline"].contains("miss") && graph["miss"].contains("app"), "{:?}", graph["pipeline"]);
    let loops = cycles(&graph);
    assert!(loops.is_empty(), "import loops among the crate's files: {loops:?}");
}

#[test]
fn the_scan_finds_a_loop_when_there_is_one() {
    let mut graph = crate_graph();
    graph.get_mut("app").unwrap().insert("routes".into());
    assert!(cycles(&graph).iter().any(|c| c.contains(&"routes".to_string()) && c.contains(&"app".to_string())));
}
