//! The generated project's modules point one way: HTTP → domain → storage → foundations. Reads the
//! `crate::` and `super::` paths of every file under `template/src` and fails on a module that uses
//! one in a layer above it, and on any cycle between modules.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use actix_api_auth_tests::repo_root;
use regex::Regex;

/// Top-level modules by layer, from the top; a module may use its own layer and those below.
const LAYERS: &[&[&str]] = &[
    &["app", "cli"],
    &["http", "routes"],
    &["keys"],
    &["auth"],
    &["store"],
    &["model", "config", "metrics", "scope"],
];

fn layer(top: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&top))
        .unwrap_or_else(|| panic!("module `{top}` is in no layer: add it to LAYERS"))
}

/// `src/http/keys.rs` → `http::keys`; `src/store/redis/mod.rs` → `store::redis`.
fn module_of(file: &Path, src: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<_> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .filter(|part| part != "mod")
        .collect();
    parts.join("::")
}

fn rust_files(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// The modules `module` uses, as far as a path names them: `crate::a::b::…` gives `a::b` when that
/// is a module, else `a`; `super::b::…` gives the sibling `b`.
fn uses(module: &str, text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let path = Regex::new(r"\b(crate|super)((?:::[a-z_][a-z0-9_]*)+)").unwrap();
    let parent = module.rsplit_once("::").map_or("", |(parent, _)| parent);
    let mut used = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for found in path.captures_iter(line) {
            let segments: Vec<&str> = found[2].trim_start_matches("::").split("::").collect();
            let base = match &found[1] {
                "crate" => String::new(),
                _ if parent.is_empty() => continue,
                _ => parent.to_owned(),
            };
            let mut target = None;
            let mut prefix = base.clone();
            for segment in segments {
                prefix = if prefix.is_empty() {
                    segment.to_owned()
                } else {
                    format!("{prefix}::{segment}")
                };
                if modules.contains(&prefix) {
                    target = Some(prefix.clone());
                }
            }
            if let Some(target) =
                target.filter(|t| t != module && !module.starts_with(&format!("{t}::")))
            {
                used.insert(target);
            }
        }
    }
    used
}

#[test]
fn modules_use_only_their_own_layer_and_those_below_without_cycles() {
    let src = repo_root().join("template/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f, &src)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for file in &files {
        let module = module_of(file, &src);
        if module == "main" || module == "lib" {
            continue;
        }
        let top = module.split("::").next().unwrap().to_owned();
        for target in uses(&module, &fs::read_to_string(file).unwrap(), &modules) {
            let target_top = target.split("::").next().unwrap();
            if layer(target_top) < layer(&top) {
                upward.push(format!("{module} uses {target}, a layer above it"));
            }
            graph.entry(module.clone()).or_default().insert(target);
        }
    }
    assert!(upward.is_empty(), "{}", upward.join("\n"));
    assert!(
        graph
            .get("http::keys")
            .is_some_and(|used| used.contains("keys")),
        "the check reads the imports: http::keys uses keys"
    );

    // A module that uses a module above it in the same tree (`auth::limits` → `auth`) is not a
    // cycle: the parent only declares and re-exports. Every other cycle is.
    let mut cycles = Vec::new();
    for start in graph.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, path)) = stack.pop() {
            for next in graph.get(&at).into_iter().flatten() {
                if next == start && path.len() > 1 {
                    cycles.push(format!("{} → {start}", path.join(" → ")));
                } else if !path.contains(next) && next > start {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}
