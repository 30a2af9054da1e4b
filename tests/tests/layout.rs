//! The core crate's rooms and the order between them: each room imports only the rooms above it
//! in `shared/src/lib.rs`'s map, so there is no import circle and the operations never see HTTP.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each room of `shared/src` (a folder, or a file at the top) and the rooms it may import.
const ROOMS: &[(&str, &[&str])] = &[
    ("domain", &[]),
    ("token", &["domain"]),
    ("config", &["domain"]),
    ("telemetry", &[]),
    ("metrics", &[]),
    ("seats", &["domain", "config"]),
    ("ledger", &["domain", "config", "token"]),
    ("webhooks", &["domain", "config", "token", "seats", "ledger", "metrics"]),
    ("service", &["domain", "config", "token", "seats", "ledger", "webhooks", "metrics"]),
    ("ops", &["domain", "config", "token", "seats", "ledger", "webhooks", "service", "metrics"]),
    ("http", &["domain", "config", "token", "seats", "ledger", "webhooks", "service", "ops", "metrics"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The rooms a file names through `crate::room`, `crate::error` counting as `domain` (lib.rs
/// re-exports `domain::error` under that name).
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        if !name.is_empty() {
            found.insert(if name == "error" { "domain".to_owned() } else { name });
        }
    }
    found
}

#[test]
fn every_room_imports_only_the_rooms_above_it() {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut seen = BTreeSet::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_str().unwrap();
        let room = first.trim_end_matches(".rs");
        if room == "lib" {
            continue;
        }
        let allowed = ROOMS
            .iter()
            .find(|(r, _)| *r == room)
            .unwrap_or_else(|| panic!("{} is in no room of the map; add it to lib.rs and here", rel.display()))
            .1;
        seen.insert(room.to_owned());
        for import in imports(&std::fs::read_to_string(file).unwrap()) {
            assert!(
                import == room || allowed.contains(&import.as_str()),
                "{} (room `{room}`) imports `{import}`, which is not above it",
                rel.display()
            );
        }
    }
    let mapped: BTreeSet<String> = ROOMS.iter().map(|(r, _)| (*r).to_owned()).collect();
    assert_eq!(seen, mapped, "every room of the map exists");
}

#[test]
fn lib_rs_opens_with_the_map_of_every_room() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let map: String = lib.lines().take_while(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
    for (room, _) in ROOMS {
        assert!(map.contains(&format!("[`{room}`]")), "lib.rs's map names `{room}`");
        assert!(lib.contains(&format!("pub mod {room};")), "lib.rs declares `{room}`");
    }
}

#[test]
fn the_import_scan_sees_paths_in_use_lists_and_expressions() {
    let found = imports("use crate::ledger::{Ledger};\nlet x = crate::error::Error::ledger(1); crate::ops::sweep");
    assert_eq!(found, ["domain", "ledger", "ops"].iter().map(|s| s.to_string()).collect());
}
