//! In-process reference backends: every trait of this crate implemented on
//! plain data structures behind a mutex.
//!
//! They are the reference model the conformance suites are written against,
//! and the embedded default for examples, tests and one-process services that
//! do not need their data to outlive the process. Time comes from a
//! [`Clock`](crate::Clock), so tests can move it with a
//! [`ManualClock`](crate::ManualClock).

mod erasure;
mod ratelimit;
mod store;
mod vector;

pub use erasure::LocalErasureLedger;
pub use ratelimit::LocalRateLimiter;
pub use store::LocalStore;
pub use vector::LocalVectorIndex;

fn unix_millis(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000)).unwrap_or(i64::MAX)
}
