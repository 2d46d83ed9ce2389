//! Time sources. In-process backends read the time from a [`Clock`] so that
//! tests can move it by hand; server backends use their server's clock.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

/// A source of the current time (UTC).
pub trait Clock: Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to, for tests of expiry and windows.
/// Clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    // A std mutex: the critical sections are a read or an add, never held
    // across an await.
    now: Arc<Mutex<OffsetDateTime>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        Self { now: Arc::new(Mutex::new(start)) }
    }

    /// A clock stopped at the current system time, truncated to whole
    /// milliseconds.
    pub fn starting_now() -> Self {
        let now = OffsetDateTime::now_utc();
        let now = now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now);
        Self::new(now)
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: OffsetDateTime) {
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
}

/// Truncates a timestamp to whole microseconds, the precision of Postgres
/// `timestamptz`: the one rule every backend applies to every timestamp it
/// takes (stored log timestamps, query bounds, cursors), so that a value
/// and the bound built from the same instant always compare as equal.
///
/// The sub-microsecond part is dropped, which moves the instant towards the
/// past, before 1970 as after it (`OffsetDateTime` keeps a non-negative
/// nanosecond within its second). Backends must truncate with this before
/// handing a timestamp to a driver: tokio-postgres, for one, truncates
/// towards 2000-01-01, which rounds earlier instants *up*.
pub fn to_micros(t: OffsetDateTime) -> OffsetDateTime {
    let micros = t.microsecond();
    t.replace_microsecond(micros).unwrap_or(t)
}

/// First year of the timestamps every backend can store.
pub const MIN_YEAR: i32 = 1;
/// Last year of the timestamps every backend can store.
pub const MAX_YEAR: i32 = 9999;

/// Checks that `t` lies in the years [`MIN_YEAR`]..=[`MAX_YEAR`] (UTC), the
/// range every backend stores exactly.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) naming `field`.
pub fn check_timestamp(field: &'static str, t: OffsetDateTime) -> crate::Result<()> {
    let year = t.to_offset(time::UtcOffset::UTC).year();
    if (MIN_YEAR..=MAX_YEAR).contains(&year) {
        Ok(())
    } else {
        Err(crate::Error::invalid(field, format!("year {year} is outside {MIN_YEAR}..={MAX_YEAR}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::starting_now();
        let t0 = c.now();
        assert_eq!(c.now(), t0);
        c.advance(Duration::from_millis(1500));
        assert_eq!(c.now() - t0, time::Duration::milliseconds(1500));
        let shared = c.clone();
        shared.advance(Duration::from_secs(1));
        assert_eq!(c.now() - t0, time::Duration::milliseconds(2500));
    }

    #[test]
    fn timestamp_range() {
        let exact = time::macros::datetime!(2026-01-01 00:00:00.123456 UTC);
        assert!(check_timestamp("t", exact).is_ok());
        let ancient = time::macros::datetime!(-5000-01-01 00:00:00 UTC);
        assert_eq!(check_timestamp("since", ancient).unwrap_err().field(), Some("since"));
    }

    #[test]
    fn micros_truncation() {
        let t = time::macros::datetime!(2026-01-01 00:00:00.123456789 UTC);
        assert_eq!(to_micros(t), time::macros::datetime!(2026-01-01 00:00:00.123456 UTC));
        let exact = time::macros::datetime!(2026-01-01 00:00:00.123456 UTC);
        assert_eq!(to_micros(exact), exact);
        // Before 1970 (and before 2000, the Postgres epoch) truncation still
        // goes towards the past: one nanosecond before the epoch is the
        // microsecond that ends there.
        let before_epoch = time::macros::datetime!(1969-12-31 23:59:59.999999999 UTC);
        assert_eq!(to_micros(before_epoch), time::macros::datetime!(1969-12-31 23:59:59.999999 UTC));
        assert_eq!(to_micros(before_epoch).unix_timestamp_nanos(), -1_000);
        let offset = time::macros::datetime!(1999-06-01 12:00:00.000000001 +05:30);
        assert_eq!(to_micros(offset), time::macros::datetime!(1999-06-01 06:30:00 UTC));
    }
}
