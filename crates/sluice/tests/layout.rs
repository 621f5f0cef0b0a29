//! The crate table in `docs/ARCHITECTURE.md` is the architecture's contract: each crate's
//! "may depend on" column must be exactly the Sluice crates its `Cargo.toml` depends on, so
//! that an arrow running back up a floor, or a doc that no longer says what the code does,
//! fails the suite instead of drifting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `crate -> allowed sluice crates`, read from the table under `## Crates`.
fn documented() -> BTreeMap<String, BTreeSet<String>> {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let section = doc
        .split("\n## Crates")
        .nth(1)
        .expect("ARCHITECTURE.md has a `## Crates` section");
    let mut rows = BTreeMap::new();
    let mut columns = None;
    for line in section.lines().take_while(|l| !l.starts_with("## ")) {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if !line.trim_start().starts_with('|') || cells.len() < 3 {
            continue;
        }
        if columns.is_none() {
            let dep = cells
                .iter()
                .position(|c| *c == "may depend on")
                .expect("the crate table has a `may depend on` column");
            columns = Some(dep);
            continue;
        }
        let dep = columns.unwrap_or_default();
        if cells[0].starts_with("---") {
            continue;
        }
        let name = cells[0].trim_matches('`').to_string();
        let deps = cells[dep]
            .split(',')
            .map(|d| d.trim().trim_matches('`'))
            .filter(|d| !d.is_empty() && *d != "—")
            .map(|d| {
                if d.starts_with("sluice") {
                    d.to_string()
                } else {
                    format!("sluice-{d}")
                }
            })
            .collect();
        rows.insert(name, deps);
    }
    rows
}

/// `crate -> the sluice crates in its [dependencies]` (optional ones included; dev-dependencies
/// are test tooling and not part of the layering).
fn actual() -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            continue;
        };
        let doc: toml::Table = text.parse().unwrap();
        let name = doc["package"]["name"].as_str().unwrap().to_string();
        let deps = doc
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|t| {
                t.keys()
                    .filter(|k| k.starts_with("sluice"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        out.insert(name, deps);
    }
    out
}

#[test]
fn every_crate_depends_on_exactly_what_the_architecture_table_allows() {
    let documented = documented();
    let actual = actual();
    assert_eq!(
        documented.keys().collect::<Vec<_>>(),
        actual.keys().collect::<Vec<_>>(),
        "the crate table lists exactly the workspace's crates"
    );
    for (name, deps) in &actual {
        assert_eq!(
            deps, &documented[name],
            "{name}: Cargo.toml's sluice dependencies differ from docs/ARCHITECTURE.md's table"
        );
    }
}
