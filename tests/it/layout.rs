//! The source tree's places and the arrows between them: each place (a
//! folder of `src/`, or a leaf file) may name only the places below it, so
//! no two places depend on each other. Read from the source text, as a
//! newcomer would read it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top to bottom: a place may use only places after it in this list.
const ORDER: [&str; 15] = [
    "cli", "tools", "daemon", "rollback", "report", "notifier", "probe", "store", "matrix",
    "config", "model", "process", "hostfile", "logging", "lib",
];

fn place_of(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    first.unwrap_or_default().trim_end_matches(".rs").to_owned()
}

fn uses(root: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let place = place_of(path.strip_prefix(root).unwrap());
            let text = std::fs::read_to_string(&path).unwrap();
            for (i, _) in text.match_indices("crate::") {
                let name: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != place {
                    out.entry(place.clone()).or_default().insert(name);
                }
            }
        }
    }
    out
}

#[test]
fn every_place_uses_only_the_places_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank = |p: &str| ORDER.iter().position(|o| *o == p);
    let mut upward = Vec::new();
    for (place, used) in uses(&root) {
        if place == "main" {
            continue;
        }
        let Some(from) = rank(&place) else {
            panic!("src/{place} is not a known place: add it to ORDER");
        };
        for u in used {
            match rank(&u) {
                Some(to) if to > from => {}
                _ => upward.push(format!("{place} -> {u}")),
            }
        }
    }
    assert!(upward.is_empty(), "arrows going up or sideways: {upward:?}");
}
