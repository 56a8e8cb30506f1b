//! The crate's module layout, read from its sources: the `use crate::…` and `use super::…`
//! lines of non-test code make an import graph between files, which must have no circle,
//! and no submodule imports its own parent (what siblings share lives in a sibling).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module, as its path below the crate root (`["store", "records"]`).
type Module = Vec<String>;

/// Every module of the library and the text of its non-test code.
fn modules(src: &Path) -> BTreeMap<Module, String> {
    let mut found = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(src)
                .expect("below src")
                .with_extension("");
            let mut module: Module = rel
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            match module.last().map(String::as_str) {
                Some("main" | "tests") => continue,
                Some("mod" | "lib") => {
                    module.pop();
                }
                _ => {}
            }
            let text = std::fs::read_to_string(&path).expect("read source");
            found.insert(module, non_test_code(&text));
        }
    }
    found
}

/// The text before the file's `#[cfg(test)] mod tests`, without line comments.
fn non_test_code(text: &str) -> String {
    let code = text
        .split("\n#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    code.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths a `use` tree names (`a::{b, c::{d}}` → `a::b`, `a::c::d`).
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = format!("{prefix}{}", &tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&head, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&head, &inner[start..], out);
    } else if !tree.is_empty() {
        out.push(format!("{prefix}{tree}"));
    }
}

/// The modules `module`'s code imports (or names by a `crate::`/`super::` path).
fn imports(module: &Module, code: &str, all: &BTreeMap<Module, String>) -> BTreeSet<Module> {
    let mut paths = Vec::new();
    let flat: String = code.split_whitespace().collect::<Vec<_>>().join(" ");
    for stmt in flat.split("use ").skip(1) {
        let stmt = stmt.split(';').next().unwrap_or_default().replace(' ', "");
        if stmt.starts_with("crate::") || stmt.starts_with("super::") {
            expand("", &stmt, &mut paths);
        }
    }
    for word in flat.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
        // `super::{a, b}` is read with the `use` lines above.
        if (word.starts_with("crate::") || word.starts_with("super::")) && !word.ends_with("::") {
            paths.push(word.to_owned());
        }
    }
    let mut found = BTreeSet::new();
    for path in paths {
        let mut parts = path.split("::").filter(|p| !p.is_empty() && *p != "*");
        let mut target: Module = match parts.next() {
            Some("crate") => Vec::new(),
            Some("super") => module[..module.len().saturating_sub(1)].to_vec(),
            _ => continue,
        };
        for part in parts {
            match part {
                "super" => {
                    target.pop();
                }
                "self" => {}
                name => target.push(name.to_owned()),
            }
        }
        while !target.is_empty() && !all.contains_key(&target) {
            target.pop();
        }
        if target != *module {
            found.insert(target);
        }
    }
    found
}

/// A circle in `graph`, if there is one.
fn find_circle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    fn visit(
        node: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        done: &mut BTreeSet<Module>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = stack.iter().position(|m| m == node) {
            return Some(stack[at..].to_vec());
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, done, stack) {
                return Some(circle);
            }
        }
        stack.pop();
        done.insert(node.clone());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let all = modules(&src);
    all.iter()
        .map(|(module, code)| (module.clone(), imports(module, code, &all)))
        .collect()
}

#[test]
fn no_module_imports_in_a_circle() {
    let graph = graph();
    assert!(graph.len() > 50, "too few modules read: {}", graph.len());
    let circle = find_circle(&graph).map(|c| c.iter().map(|m| m.join("::")).collect::<Vec<_>>());
    assert_eq!(circle, None, "modules importing each other in a circle");
}

#[test]
fn no_module_imports_its_own_parent() {
    let graph = graph();
    for (module, targets) in &graph {
        if let Some((_, parent)) = module.split_last()
            && !parent.is_empty()
        {
            assert!(
                !targets.contains(&parent.to_vec()),
                "{} imports its parent {}",
                module.join("::"),
                parent.join("::")
            );
        }
    }
}

#[test]
fn the_reader_sees_a_circle_and_an_upward_import() {
    let mut all = BTreeMap::new();
    let a: Module = vec!["r".into(), "a".into()];
    let b: Module = vec!["r".into(), "b".into()];
    let r: Module = vec!["r".into()];
    all.insert(r.clone(), String::new());
    all.insert(a.clone(), "use super::b::{X, y::{Z}};".to_owned());
    all.insert(b.clone(), "use crate::r::a::W;\nuse super::Q;".to_owned());
    let graph: BTreeMap<_, _> = all
        .iter()
        .map(|(m, code)| (m.clone(), imports(m, code, &all)))
        .collect();
    assert_eq!(graph[&a], BTreeSet::from([b.clone()]));
    assert_eq!(graph[&b], BTreeSet::from([a.clone(), r.clone()]));
    assert!(find_circle(&graph).is_some());
}
