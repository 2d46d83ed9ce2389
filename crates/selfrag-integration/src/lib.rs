//! Tests of the `selfrag` facade, kept in a package of their own so that the
//! facade's examples build without the test servers' dependencies. The tests
//! are in `tests/`: `storage.rs` (what `Storage::from_lookup` composes, and
//! the user contract across composed stores) and `secrets.rs` (no password
//! or key in any output). Nothing is exported.
