//! The schema guard: a spool holds records of one schema, the one the running
//! version encodes with, since the drain publishes them with its own schema
//! headers (and, with a registry, its own schema id).

use std::io;
use std::path::Path;

use super::error::SpoolSchemaMismatch;

/// Name of the file that says which schema the spooled records are encoded
/// with (its fingerprint).
pub const SCHEMA_FILE: &str = "SCHEMA";

/// Refuses a spool whose records were encoded with another schema (when it
/// holds any), and records this version's schema for the records to come.
pub(super) fn check_schema(dir: &Path, holds_records: bool) -> anyhow::Result<()> {
    let current = crate::avro::RecordSchema::get().fingerprint();
    let path = dir.join(SCHEMA_FILE);
    match std::fs::read_to_string(&path) {
        Ok(spooled) if holds_records && spooled.trim() != current => {
            return Err(SpoolSchemaMismatch {
                dir: dir.to_owned(),
                spooled: spooled.trim().to_owned(),
                current: current.to_owned(),
            }
            .into());
        }
        Ok(spooled) if spooled.trim() == current => return Ok(()),
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if holds_records {
                // A spool from before the guard, or one whose file a power
                // loss took: its records are taken for this schema's.
                tracing::warn!(
                    dir = %dir.display(),
                    "spool: records without a {SCHEMA_FILE} file; taken as encoded with this \
                     version's schema (a spool written by a version with another schema must be \
                     drained by that version)"
                );
            }
        }
        Err(error) => return Err(error.into()),
    }
    std::fs::write(&path, current)?;
    std::fs::File::open(&path)?.sync_all()?;
    // Its name too, before records follow it: otherwise a power loss could
    // keep them and lose the file that says how they are encoded.
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
