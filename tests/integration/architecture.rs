//! The layout's promises, checked on the source: no module imports one that
//! imports it back, the wire protocol depends on neither the parent nor the
//! fork server, and those two never import each other. Every module starts
//! with a `//!` doc. References are `crate::` and `super::` paths outside
//! comments and `#[cfg(test)]` modules, resolved to the longest module that
//! exists.

use crate::common::repo_root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of the library by path (`worker::parent::job`), with its source.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = repo_root().join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .filter(|f| !f.ends_with("main.rs"))
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            (parts.join("::"), std::fs::read_to_string(&f).unwrap())
        })
        .collect()
}

/// The code a module runs outside its tests, without comments.
fn code(source: &str) -> String {
    let before_tests = source.split("#[cfg(test)]").next().unwrap_or("");
    before_tests
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Paths like `a::b::c` starting right after `prefix` in `code`.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        out.push(rest[..end].trim_end_matches(':'));
    }
    out
}

fn resolve(modules: &BTreeMap<String, String>, path: &[&str]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains_key(m))
}

/// Edges `from -> to` between distinct modules.
fn imports(modules: &BTreeMap<String, String>) -> BTreeSet<(String, String)> {
    let mut edges = BTreeSet::new();
    for (name, source) in modules {
        let code = code(source);
        let me: Vec<&str> = if name.is_empty() {
            vec![]
        } else {
            name.split("::").collect()
        };
        let mut targets = Vec::new();
        for p in paths_after(&code, "crate::") {
            targets.extend(resolve(modules, &p.split("::").collect::<Vec<_>>()));
        }
        for p in paths_after(&code, "super::") {
            let mut up = 1;
            let mut rest = p;
            while let Some(r) = rest.strip_prefix("super::") {
                up += 1;
                rest = r;
            }
            let mut path: Vec<&str> = me[..me.len().saturating_sub(up)].to_vec();
            path.extend(rest.split("::").filter(|s| !s.is_empty()));
            targets.extend(resolve(modules, &path));
        }
        for t in targets {
            if t != *name && !t.is_empty() {
                edges.insert((name.clone(), t));
            }
        }
    }
    edges
}

fn nested(a: &str, b: &str) -> bool {
    a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"))
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let modules = modules();
    assert!(
        modules.contains_key("worker::parent::job"),
        "{:?}",
        modules.keys()
    );
    let edges = imports(&modules);
    let cycles: Vec<_> = edges
        .iter()
        .filter(|(a, b)| a < b && !nested(a, b) && edges.contains(&(b.clone(), a.clone())))
        .collect();
    assert!(
        cycles.is_empty(),
        "modules that import each other: {cycles:?}"
    );
}

#[test]
fn the_protocol_is_the_leaf_between_parent_and_fork_server() {
    let modules = modules();
    let edges = imports(&modules);
    let from = |prefix: &str, to: &str| -> Vec<&(String, String)> {
        edges
            .iter()
            .filter(|(a, b)| {
                (a == prefix || a.starts_with(&format!("{prefix}::")))
                    && (b == to || b.starts_with(&format!("{to}::")))
            })
            .collect()
    };
    for (a, b) in [
        ("worker::protocol", "worker::parent"),
        ("worker::protocol", "worker::forkserver"),
        ("worker::parent", "worker::forkserver"),
        ("worker::forkserver", "worker::parent"),
    ] {
        assert!(
            from(a, b).is_empty(),
            "{a} must not import {b}: {:?}",
            from(a, b)
        );
    }
    assert!(!from("worker::parent", "worker::protocol").is_empty());
    assert!(!from("worker::forkserver", "worker::protocol").is_empty());
}

#[test]
fn every_module_says_what_it_is() {
    for (name, source) in modules() {
        assert!(
            source.trim_start().starts_with("//!"),
            "module `{name}` does not start with a //! doc"
        );
    }
}
