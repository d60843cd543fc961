/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Redis refused the credentials of `store.url` (or has none): transient
    /// as far as the breaker goes, since an operator fixes it on either side.
    #[error("store refused our credentials (auth failed): {0}")]
    Auth(String),
    #[error("store answered something unexpected: {0}")]
    Protocol(String),
}

impl StoreError {
    /// Whether asking again later may succeed (the failure is in the store
    /// or the network, not in what we sent).
    pub fn is_transient(&self) -> bool {
        !matches!(self, StoreError::Protocol(_))
    }

    /// A bounded label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Auth(_) => "auth",
            StoreError::Protocol(_) => "protocol",
        }
    }
}
