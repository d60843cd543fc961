//! What can go wrong inside the engine beyond a store failure.

use crate::store::StoreError;

/// A reservation record that cannot be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Cannot happen for the types in `reservation`, but is not assumed
    /// away: a reservation without its record could never be settled.
    #[error("cannot encode the reservation record: {0}")]
    Encode(serde_json::Error),
    /// The store holds bytes at a reservation's key that are not one (a
    /// record written by an incompatible version, or by something else).
    #[error("corrupt reservation record at {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
}

impl RecordError {
    /// A bounded label for the internal errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            RecordError::Encode(_) => "record_encode",
            RecordError::Corrupt { .. } => "record_corrupt",
        }
    }
}

/// Why an engine call that needs the store did not complete.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Record(#[from] RecordError),
}
