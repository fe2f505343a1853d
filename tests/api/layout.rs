//! The crate's modules depend on each other one way only: a module never
//! reaches, through its imports, back to itself. Read from the sources (outside
//! their test modules), so that a new upward import fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::repo_path;

/// Top-level module of `src/` → the top-level modules its code names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut pending = vec![repo_path("src")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(repo_path("src")).unwrap();
            let module = relative.iter().next().unwrap().to_string_lossy();
            let module = module.trim_end_matches(".rs").to_owned();
            if module == "main" || module == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let production = text.split("#[cfg(test)]").next().unwrap();
            let deps = graph.entry(module.clone()).or_default();
            for line in production
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
            {
                for (at, _) in line.match_indices("crate::") {
                    let name: String = line[at + "crate::".len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != module {
                        deps.insert(name);
                    }
                }
            }
        }
    }
    graph
}

#[test]
fn no_module_reaches_back_to_itself() {
    let graph = module_graph();
    assert!(graph.contains_key("ingest") && graph.contains_key("kafka"));
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut pending: Vec<&String> = graph[start].iter().collect();
        while let Some(module) = pending.pop() {
            assert_ne!(
                module, start,
                "import circle through {start}; the graph: {graph:#?}"
            );
            if seen.insert(module) {
                pending.extend(graph.get(module).into_iter().flatten());
            }
        }
    }
}
