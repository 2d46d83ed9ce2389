//! Smoke test for CI: runs the benchmark binary with `--quick` against the
//! servers in `SELFRAG_TEST_POSTGRES_URL` / `SELFRAG_TEST_REDIS_URL` (a
//! server whose variable is unset is skipped, as the binary skips its rows)
//! and checks that the JSON report has every expected row with sane numbers.
//!
//! ```text
//! SELFRAG_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//! SELFRAG_TEST_REDIS_URL=redis://127.0.0.1:6379 cargo test -p selfrag-bench
//! ```

use std::process::Command;
use std::time::Instant;

fn url(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

#[test]
fn quick_run_reports_every_row() {
    let postgres = url("SELFRAG_TEST_POSTGRES_URL");
    let redis = url("SELFRAG_TEST_REDIS_URL");
    if postgres.is_none() && redis.is_none() {
        eprintln!("SKIPPED: set SELFRAG_TEST_POSTGRES_URL and/or SELFRAG_TEST_REDIS_URL");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_selfrag-bench"));
    cmd.arg("--quick").arg("--json").arg(&json);
    // Each row by the start of its name, at the concurrencies it runs at.
    const USUAL: &[u64] = &[1, 8, 64];
    let mut expected: Vec<(&str, &[u64])> = Vec::new();
    if let Some(u) = &postgres {
        cmd.arg("--postgres").arg(u);
        expected.extend([
            ("memory append (1 row) ", USUAL),
            ("memory append (1 row, coalesced)", &[1, 8, 64, 256][..]),
            ("session touch (coalesced)", &[1, 8, 64, 256][..]),
            ("memory batch append", USUAL),
            ("memory query", USUAL),
            ("control: SQL", USUAL),
        ]);
    }
    if let Some(u) = &redis {
        cmd.arg("--redis").arg(u);
        for op in ["session get", "control: HMGET", "session touch vs", "rate-limit check"] {
            expected.push((op, USUAL));
        }
    }
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "benchmark failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // How long it took is reported, not asserted: timing belongs in the
    // benchmark, and a loaded CI machine would make such a check flaky.
    eprintln!("--quick took {took:?}");
    assert!(stdout.contains("SKIPPED: qdrant rows"), "{stdout}");

    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["quick"], true);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), expected.iter().map(|(_, c)| c.len()).sum::<usize>(), "{report:#}");
    for (op, concurrencies) in expected {
        for &c in concurrencies {
            let row = rows
                .iter()
                .find(|r| r["operation"].as_str().unwrap().starts_with(op) && r["concurrency"] == c)
                .unwrap_or_else(|| panic!("no row {op} at concurrency {c}: {report:#}"));
            for side in ["ours", "raw"] {
                assert!(row[side]["ops"].as_u64().unwrap() > 0, "{row}");
                assert!(row[side]["ops_per_s"].as_f64().unwrap() > 0.0, "{row}");
                assert!(row[side]["p99_ms"].as_f64().unwrap() >= row[side]["p50_ms"].as_f64().unwrap(), "{row}");
            }
            assert!(row["ratio"].as_f64().unwrap() > 0.0, "{row}");
        }
    }
}
