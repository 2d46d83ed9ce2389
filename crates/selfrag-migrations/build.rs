//! Embeds every `migrations/NNN_name.sql` file into the crate.
//!
//! `migrations` is a symlink to the workspace's top-level `migrations/`, so the
//! SQL has one home; `cargo package` follows the link and ships the files, so
//! the published crate builds the same list. The list is generated (rather
//! than written by hand) so that a new file cannot be forgotten, and the
//! checks here turn a misnamed or missing file into a build error instead of
//! a runtime surprise.

use std::fmt::Write as _;
use std::path::Path;
use std::{env, fs};

fn main() {
    let dir = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("migrations");
    println!("cargo::rerun-if-changed={}", dir.display());

    let mut found = Vec::new();
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let file = path.file_name().and_then(|f| f.to_str()).expect("UTF-8 file name").to_owned();
        let Some(stem) = file.strip_suffix(".sql") else { continue };
        let (version, name) = stem
            .split_once('_')
            .filter(|(v, n)| {
                !v.is_empty()
                    && v.bytes().all(|b| b.is_ascii_digit())
                    && !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            })
            .unwrap_or_else(|| panic!("migration file `{file}` must be named NNN_lowercase_name.sql"));
        let version: u32 = version.parse().unwrap_or_else(|e| panic!("migration file `{file}`: version: {e}"));
        let path = fs::canonicalize(&path).expect("canonical path");
        println!("cargo::rerun-if-changed={}", path.display());
        found.push((version, name.to_owned(), file, path));
    }
    found.sort();

    // Versions run 1, 2, 3, ... with no gap: a gap is a deleted or misnumbered
    // file, and the database would refuse the history anyway.
    for (i, (version, _, file, _)) in found.iter().enumerate() {
        let expected = u32::try_from(i + 1).expect("fewer than 2^32 migrations");
        assert_eq!(*version, expected, "migration `{file}` has version {version}, expected {expected} (no gaps)");
    }
    assert!(!found.is_empty(), "no migrations in {}", dir.display());

    let mut out = String::from("&[\n");
    for (version, name, file, path) in &found {
        writeln!(
            out,
            "    EmbeddedMigration {{ version: {version}, name: {name:?}, file: {file:?}, sql: include_str!({path:?}) }},",
            path = path.display().to_string(),
        )
        .expect("write to String");
    }
    out.push(']');
    let out_file = Path::new(&env::var("OUT_DIR").expect("set by cargo")).join("embedded.rs");
    fs::write(&out_file, out).unwrap_or_else(|e| panic!("cannot write {}: {e}", out_file.display()));
}
