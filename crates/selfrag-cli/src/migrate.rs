//! `selfrag migrate up|status`.

use selfrag_postgres::selfrag_migrations::{MigrationState, Status};
use serde_json::{json, Value};

use crate::cli::{Global, MigrateAction};
use crate::output::{Exit, Failure, Out};

pub(crate) async fn run(global: &Global, action: &MigrateAction, out: Out) -> Result<Exit, Failure> {
    let (_, pool) = global.postgres_pool()?;
    match action {
        MigrateAction::Up => {
            out.progress("applying pending migrations (waits for the migration lock if another runner holds it)");
            let report =
                selfrag_postgres::migrate(&pool).await.map_err(|e| Failure::from_core("migrate up failed", &e))?;
            let status = selfrag_postgres::migration_status(&pool)
                .await
                .map_err(|e| Failure::from_core("reading the migration status failed", &e))?;
            let mut human = if report.applied.is_empty() {
                format!("schema {}: already up to date\n", status.schema)
            } else {
                let mut text = format!("schema {}: applied {} migration(s)\n", status.schema, report.applied.len());
                for m in &report.applied {
                    text.push_str(&format!("  {:03} {}\n", m.version, m.name));
                }
                text
            };
            human.push_str(&status.to_string());
            let applied: Vec<Value> =
                report.applied.iter().map(|m| json!({ "version": m.version, "name": m.name })).collect();
            let mut doc = status_json(&status);
            doc["applied"] = Value::Array(applied);
            Ok(out.finish(Exit::Ok, &human, doc))
        }
        MigrateAction::Status => {
            let status = selfrag_postgres::migration_status(&pool)
                .await
                .map_err(|e| Failure::from_core("reading the migration status failed", &e))?;
            let exit = if status.is_up_to_date() { Exit::Ok } else { Exit::Failed };
            let mut human = status.to_string();
            if let Some(problem) = status.problem() {
                human.push_str(&format!("problem: {problem}\n"));
            } else if !status.is_up_to_date() {
                let pending: Vec<String> = status.pending().map(|m| format!("{:03}", m.version)).collect();
                human.push_str(&format!("pending: {} (run `selfrag migrate up`)\n", pending.join(", ")));
            }
            Ok(out.finish(exit, &human, status_json(&status)))
        }
    }
}

/// The status as JSON. Checksums are strings: they are u64 and JSON readers
/// often hold numbers as doubles.
pub(crate) fn status_json(status: &Status) -> Value {
    let migrations: Vec<Value> = status
        .migrations
        .iter()
        .map(|m| {
            let (state, applied_on, recorded) = match &m.state {
                MigrationState::Applied { applied_on } => ("applied", Some(applied_on.clone()), None),
                MigrationState::Pending => ("pending", None, None),
                MigrationState::Skipped => ("skipped", None, None),
                MigrationState::Edited { recorded } => ("edited", None, Some(recorded.to_string())),
                MigrationState::NotInBuild => ("not_in_build", None, None),
            };
            json!({
                "version": m.version,
                "name": m.name,
                "checksum": m.checksum.to_string(),
                "state": state,
                "applied_on": applied_on,
                "recorded_checksum": recorded,
            })
        })
        .collect();
    json!({
        "schema": status.schema,
        "up_to_date": status.is_up_to_date(),
        "problem": status.problem().map(|p| p.to_string()),
        "migrations": migrations,
    })
}
