//! The crate's modules stay in the layers ARCHITECTURE.md describes: every `crate::…` path in
//! `src/` names a module below the one it is written in, so there is no cycle and no upward
//! import. Within a directory module, files import each other without cycles too.
//!
//! Unit tests (`#[cfg(test)]` modules) are exempt: a test may check a low layer against a
//! higher one (the host kernels against dfdx's layers, say) without the code depending on it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Bottom to top. Within a layer a module may import the modules listed before it, except in
/// `commands`, whose modules are independent of each other.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "ground floor",
        &[
            "files", "seed", "config", "pixels", "progress", "lock", "canvas", "dist",
        ],
    ),
    ("kernels", &["kernels"]),
    ("device", &["device"]),
    ("data", &["shards", "loader"]),
    ("model", &["model"]),
    ("engine", &["engine"]),
    ("run", &["run"]),
    (
        "commands",
        &[
            "sample",
            "preprocess",
            "export",
            "bench",
            "check",
            "train",
            "eval",
        ],
    ),
    ("command line", &["cli"]),
];
const INDEPENDENT: &str = "commands";

/// `(layer index, position in the layer)` of a top-level module.
fn rank(module: &str) -> Option<(usize, usize)> {
    LAYERS.iter().enumerate().find_map(|(layer, (_, modules))| {
        let at = modules.iter().position(|m| *m == module)?;
        Some((layer, at))
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Files that only exist for tests: `#[cfg(test)] mod name;` in their parent.
fn test_only_files(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for file in files {
        let text = fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for pair in lines.windows(2) {
            if pair[0] == "#[cfg(test)]" {
                if let Some(name) = pair[1]
                    .strip_prefix("mod ")
                    .and_then(|r| r.strip_suffix(';'))
                {
                    out.insert(file.with_file_name(format!("{name}.rs")));
                }
            }
        }
    }
    out
}

/// The code lines of a file (1-based numbers), without comments and without an inline
/// `#[cfg(test)] mod … { … }` block.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let trimmed = line.trim();
        if trimmed == "#[cfg(test)]" {
            if let Some((_, next)) = lines.peek() {
                if next.trim().starts_with("mod ") && next.trim().ends_with('{') {
                    // Unit tests sit at the end of their file.
                    break;
                }
            }
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let code = match line.find("//") {
            // Not inside a string: good enough for this crate's code.
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        out.push((i + 1, code.to_string()));
    }
    out
}

/// The top-level modules a line names through `crate::`.
fn crate_paths(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

/// The top-level module a file belongs to (`src/engine/fast.rs` → `engine`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

fn layer_name(module: &str) -> &'static str {
    rank(module).map_or("no layer", |(l, _)| LAYERS[l].0)
}

#[test]
fn modules_import_only_from_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let test_only = test_only_files(&files);
    let mut violations = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if matches!(module.as_str(), "main" | "lib") || test_only.contains(file) {
            continue;
        }
        let Some((layer, at)) = rank(&module) else {
            violations.push(format!(
                "{}: module `{module}` is in no layer; add it to ARCHITECTURE.md and to LAYERS",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(file).unwrap();
        for (line, code) in code_lines(&text) {
            for target in crate_paths(&code) {
                if target == module {
                    continue;
                }
                let allowed = match rank(&target) {
                    Some((l, _)) if l < layer => true,
                    Some((l, a)) if l == layer => LAYERS[l].0 != INDEPENDENT && a < at,
                    _ => false,
                };
                if !allowed {
                    violations.push(format!(
                        "{}:{line}: `{module}` ({}) imports `{target}` ({}), which is not below it",
                        file.display(),
                        layer_name(&module),
                        layer_name(&target),
                    ));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layers of ARCHITECTURE.md:\n{}",
        violations.join("\n")
    );
}

#[test]
fn files_of_a_module_import_each_other_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let test_only = test_only_files(&files);
    // Per directory: which sibling files each file names (`super::x`, `crate::module::x`).
    let mut graphs: BTreeMap<PathBuf, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let Some(dir) = file.parent() else { continue };
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        if name == "mod" || dir == src || test_only.contains(file) {
            continue;
        }
        let module = dir
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('/', "::");
        let siblings: BTreeSet<String> = fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                let stem = p.file_stem()?.to_string_lossy().to_string();
                (stem != "mod" && stem != name).then_some(stem)
            })
            .collect();
        let text = fs::read_to_string(file).unwrap();
        let mut uses = BTreeSet::new();
        for (_, code) in code_lines(&text) {
            for sibling in &siblings {
                let via_super = format!("super::{sibling}");
                let via_crate = format!("crate::{module}::{sibling}");
                let names = |prefix: &str| {
                    code.match_indices(prefix).any(|(at, _)| {
                        let after = code[at + prefix.len()..].chars().next();
                        !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
                    })
                };
                if names(&via_super) || names(&via_crate) {
                    uses.insert(sibling.clone());
                }
            }
        }
        graphs
            .entry(dir.to_path_buf())
            .or_default()
            .insert(name, uses);
    }
    let mut cycles = Vec::new();
    for (dir, graph) in &graphs {
        for (a, uses) in graph {
            for b in uses {
                if reaches(graph, b, a, &mut BTreeSet::new()) {
                    cycles.push(format!(
                        "{}: {a}.rs and {b}.rs import each other",
                        dir.display()
                    ));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "cycles between files:\n{}",
        cycles.join("\n")
    );
}

fn reaches(
    graph: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
    seen: &mut BTreeSet<String>,
) -> bool {
    if from == to {
        return true;
    }
    if !seen.insert(from.to_string()) {
        return false;
    }
    graph
        .get(from)
        .is_some_and(|next| next.iter().any(|n| reaches(graph, n, to, seen)))
}

#[test]
fn the_checks_find_what_they_look_for() {
    assert_eq!(
        crate_paths("use crate::{config::Pipeline, files};  crate::engine::x(crate::run::y)"),
        ["config", "files", "engine", "run"]
    );
    let code = code_lines("use crate::a;\n// crate::b\nlet x = 1; // crate::c\n#[cfg(test)]\nmod tests {\nuse crate::d;\n}\n");
    let named: Vec<String> = code.iter().flat_map(|(_, l)| crate_paths(l)).collect();
    assert_eq!(named, ["a"]);
    assert!(rank("engine") > rank("model") && rank("model") > rank("kernels"));
}
