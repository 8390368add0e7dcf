//! The agent's folders follow the pipeline, and this keeps them that way: it reads every
//! module's `use` trees and `crate::`/`super::`/`self::` paths, and fails on an import cycle
//! between modules or on a top-level module that reaches one later in the pipeline. A module
//! declaring or re-exporting its own children is not an import.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// The top-level modules in pipeline order: each may use only those before it.
const LAYERS: &[&str] = &[
    "report",
    "kernel",
    "profile",
    "attribution",
    "collection",
    "export",
    "serve",
    "config",
    "client",
    "app",
];

/// Module path (`a::b`) → source text with comments and literals blanked.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).expect("read src dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(src)
                .expect("below src")
                .with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            if parts == ["main"] {
                continue; // The binary is not part of the library's graph.
            }
            let text = fs::read_to_string(&path).expect("read module");
            out.insert(parts.join("::"), code_only(&text));
        }
    }
    out
}

/// The text with comments, string and char literals replaced by spaces.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && !is_ident(chars.get(i.wrapping_sub(1)))
        {
            let mut hashes = 0;
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            'raw: while j < chars.len() {
                if chars[j] == '"' && (1..=hashes).all(|k| chars.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break 'raw;
                }
                j += 1;
            }
            out.push(' ');
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' && (chars.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal (a lifetime has no closing quote right after one char).
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// Expands a `use` tree (`a::{b, c::{d as e}}`) into paths.
fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let close = tree.rfind('}').expect("balanced use tree");
        let mut depth = 0;
        let mut start = open + 1;
        let mut base = prefix.to_vec();
        base.extend(head);
        for (i, c) in tree[..close].char_indices().skip(open + 1) {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&base, &tree[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&base, &tree[start..close], out);
    } else {
        let path = tree.split(" as ").next().unwrap_or_default();
        let mut full = prefix.to_vec();
        full.extend(
            path.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
        out.push(full);
    }
}

/// Every path a module names, with where it stands: its `use` trees and inline `crate::`,
/// `super::`, `self::` paths.
fn paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let starts_word =
        |at: usize| at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
    let mut i = 0;
    while let Some(found) = code[i..].find("use ") {
        let at = i + found;
        i = at + 4;
        if !starts_word(at) {
            continue;
        }
        let Some(end) = code[i..].find(';') else {
            break;
        };
        let mut trees = Vec::new();
        expand(&[], &code[i..i + end], &mut trees);
        out.extend(trees.into_iter().map(|path| (at, path)));
        i += end;
    }
    for root in ["crate::", "super::", "self::"] {
        let mut i = 0;
        while let Some(found) = code[i..].find(root) {
            let at = i + found;
            i = at + root.len();
            if !starts_word(at) {
                continue;
            }
            let rest: String = code[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if rest.ends_with("::") {
                continue; // `crate::{..}`: a use tree, read above.
            }
            out.push((
                at,
                rest.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ));
        }
    }
    out
}

/// Inline modules (`mod tests { ... }`): name and the byte range of their body.
fn inline_modules(code: &str) -> Vec<(String, std::ops::Range<usize>)> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(found) = code[i..].find("mod ") {
        let at = i + found;
        i = at + 4;
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
            continue;
        }
        let name: String = code[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let after = code[i + name.len()..].trim_start();
        if name.is_empty() || !after.starts_with('{') {
            continue; // `mod name;`: a file module.
        }
        let open = code.len() - after.len();
        let mut depth = 0;
        let mut close = code.len();
        for (j, c) in code[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        close = open + j;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((name, open..close));
    }
    out
}

/// Module → the modules it imports from (never itself or its own descendants).
fn graph(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, code) in modules {
        let file: Vec<String> = if module.is_empty() {
            Vec::new()
        } else {
            module.split("::").map(str::to_owned).collect()
        };
        let inline = inline_modules(code);
        for (at, path) in paths(code) {
            // Inside `mod tests { .. }`, `super` is the file's own module.
            let mut here = file.clone();
            here.extend(
                inline
                    .iter()
                    .filter(|(_, body)| body.contains(&at))
                    .map(|(name, _)| name.clone()),
            );
            let Some(first) = path.first() else {
                continue;
            };
            let (mut base, mut rest) = match first.as_str() {
                "crate" => (Vec::new(), &path[1..]),
                "self" => (here.clone(), &path[1..]),
                "super" => (here[..here.len().saturating_sub(1)].to_vec(), &path[1..]),
                // A child module named directly (`use loader::Recorder` in its parent).
                name if modules.contains_key(&join(&here, name)) => (here.clone(), &path[..]),
                _ => continue,
            };
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            let target = (0..=base.len())
                .rev()
                .map(|n| base[..n].join("::"))
                .find(|candidate| modules.contains_key(candidate));
            let Some(target) = target else {
                continue;
            };
            let own = target == *module
                || module.is_empty()
                || target.starts_with(&format!("{module}::"));
            if !own {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

fn join(here: &[String], name: &str) -> String {
    let mut parts = here.to_vec();
    parts.push(name.to_owned());
    parts.join("::")
}

/// A cycle in `edges`, if any.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next) {
                Some(1) => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(cycle) = visit(next, edges, state, stack) {
                        return Some(cycle);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if !state.contains_key(node)
            && let Some(cycle) = visit(node, edges, &mut state, &mut Vec::new())
        {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn no_import_cycles_and_the_pipeline_order_holds() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    assert!(
        modules.contains_key("kernel::mapped"),
        "the walk found the modules"
    );
    let edges = graph(&modules);
    // The checker sees what it should: a known import of each kind.
    assert!(edges["collection"].contains("kernel"), "{edges:?}");
    assert!(
        edges["kernel::loader"].contains("kernel::object"),
        "{edges:?}"
    );
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
    let top = |module: &str| module.split("::").next().unwrap_or_default().to_owned();
    let mut wrong = Vec::new();
    for (from, targets) in &edges {
        let Some(from_layer) = LAYERS.iter().position(|l| *l == top(from)) else {
            panic!("top-level module {} is not in LAYERS", top(from));
        };
        for to in targets {
            let to_layer = LAYERS.iter().position(|l| *l == top(to));
            if to_layer.is_none_or(|to_layer| to_layer > from_layer) {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the pipeline order ({}): {wrong:?}",
        LAYERS.join(" < ")
    );
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut modules = BTreeMap::new();
    modules.insert("a".to_owned(), code_only("use crate::b::X; // crate::c"));
    modules.insert(
        "b".to_owned(),
        code_only("fn f() { let _ = \"crate::c\"; crate::a::g(); }"),
    );
    modules.insert("c".to_owned(), String::new());
    let edges = graph(&modules);
    assert_eq!(
        edges
            .get("a")
            .map(|t| t.iter().cloned().collect::<Vec<_>>()),
        Some(vec!["b".to_owned()])
    );
    assert_eq!(
        find_cycle(&edges),
        Some(vec!["a".to_owned(), "b".to_owned(), "a".to_owned()])
    );
}
