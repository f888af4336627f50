//! The scoring service's errors and their gRPC status.

use alp_runtime::{ErrorKind, FieldViolation, ServiceError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error("{0}")]
    InvalidArgument(#[from] FieldViolation),
    #[error(
        "learner {learner_id:?} has {reviews} reviews (answers after an item's first); fitting needs at least {needed}"
    )]
    NotEnoughReviews { learner_id: String, reviews: usize, needed: usize },
    #[error("memory model: {0}")]
    Model(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError for ScoringError {
    fn kind(&self) -> ErrorKind {
        match self {
            ScoringError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            ScoringError::NotEnoughReviews { .. } => ErrorKind::FailedPrecondition,
            ScoringError::Model(_) => ErrorKind::Internal,
            ScoringError::Store(err) => err.kind(),
        }
    }
}

impl From<ScoringError> for tonic::Status {
    fn from(err: ScoringError) -> Self {
        alp_runtime::error::to_status(&err)
    }
}
