//! Helpers shared by the suites: assertion macros that say what was expected
//! and what was got, error matchers, and a small deterministic RNG.

use std::fmt::{self, Debug};
use std::panic::Location;

use selfrag_core::{Error, ErrorKind};

use crate::CheckResult;

/// Fails the check with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        // Bound first: a NaN comparison is false, so it fails the check.
        let holds: bool = $cond;
        if !holds {
            return Err(format!("{} [{}:{}]", format_args!($($arg)+), file!(), line!()));
        }
    };
}

/// Fails the check unless `got == expected`, showing both.
macro_rules! ensure_eq {
    ($got:expr, $expected:expr, $($arg:tt)+) => {{
        let (got, expected) = (&$got, &$expected);
        if got != expected {
            return Err(format!(
                "{}: expected {:?}, got {:?} [{}:{}]",
                format_args!($($arg)+),
                expected,
                got,
                file!(),
                line!()
            ));
        }
    }};
}

/// Turns a backend error into a check failure naming the call.
pub(crate) trait Ctx<T> {
    /// `Ok` stays; an error becomes "`what`: unexpected error ...".
    fn ctx(self, what: impl fmt::Display) -> Result<T, String>;
}

impl<T> Ctx<T> for selfrag_core::Result<T> {
    #[track_caller]
    fn ctx(self, what: impl fmt::Display) -> Result<T, String> {
        let at = Location::caller();
        self.map_err(|e| format!("{what}: unexpected error: {e} ({e:?}) [{}:{}]", at.file(), at.line()))
    }
}

/// Expects an error of `kind`.
#[track_caller]
pub(crate) fn expect_kind<T: Debug>(r: selfrag_core::Result<T>, kind: ErrorKind, what: &str) -> CheckResult {
    let at = Location::caller();
    match r {
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(format!("{what}: expected a {kind} error, got error {e} ({e:?}) [{}:{}]", at.file(), at.line())),
        Ok(v) => Err(format!("{what}: expected a {kind} error, got Ok({v:?}) [{}:{}]", at.file(), at.line())),
    }
}

/// Expects [`Error::InvalidInput`] whose field passes `field_ok`
/// (described by `field_desc`).
#[track_caller]
pub(crate) fn expect_invalid_where<T: Debug>(
    r: selfrag_core::Result<T>,
    what: &str,
    field_desc: &str,
    field_ok: impl FnOnce(&str) -> bool,
) -> CheckResult {
    let at = Location::caller();
    let loc = format!("[{}:{}]", at.file(), at.line());
    match r {
        Err(Error::InvalidInput { field, reason }) => {
            if field_ok(&field) {
                Ok(())
            } else {
                Err(format!(
                    "{what}: expected InvalidInput naming {field_desc}, got InvalidInput naming `{field}` ({reason}) {loc}"
                ))
            }
        }
        Err(e) => Err(format!("{what}: expected InvalidInput naming {field_desc}, got error {e} ({e:?}) {loc}")),
        Ok(v) => {
            let mut shown = format!("{v:?}");
            if shown.len() > 300 {
                let mut end = 300;
                while !shown.is_char_boundary(end) {
                    end -= 1;
                }
                shown.truncate(end);
                shown.push_str("...");
            }
            Err(format!("{what}: expected InvalidInput naming {field_desc}, got Ok({shown}) {loc}"))
        }
    }
}

/// Expects [`Error::InvalidInput`] naming exactly `field`.
#[track_caller]
pub(crate) fn expect_invalid<T: Debug>(r: selfrag_core::Result<T>, what: &str, field: &str) -> CheckResult {
    expect_invalid_where(r, what, &format!("`{field}`"), |f| f == field)
}

/// SplitMix64: a tiny deterministic generator, so corpora are the same on
/// every run and every backend.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// An index into a slice of length `n`.
    pub(crate) fn index(&mut self, n: usize) -> usize {
        usize::try_from(self.below(n as u64)).unwrap_or(0)
    }

    /// A random element of `items`.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }

    /// A float in `[-1, 1)`.
    pub(crate) fn unit(&mut self) -> f32 {
        // 24 random bits: exactly representable in an f32.
        let bits = u32::try_from(self.next_u64() >> 40).unwrap_or(0);
        (bits as f32 / (1u32 << 23) as f32) - 1.0
    }

    /// Shuffles `items` (Fisher–Yates).
    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.index(i + 1);
            items.swap(i, j);
        }
    }
}
