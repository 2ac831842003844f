//! (stub: the sequential scanner is being written)
use super::{Report, SnapshotError};
use std::path::Path;

pub fn inspect_file(_path: &Path) -> Result<Report, SnapshotError> {
    Err(SnapshotError::Format("scanner not built yet".into()))
}
