//! The user service's errors and their gRPC status.

use alp_runtime::{ErrorKind, FieldViolation, ServiceError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    InvalidArgument(#[from] FieldViolation),
    #[error("{entity} {id:?} not found")]
    NotFound { entity: &'static str, id: String },
    #[error("{entity} {id:?} already exists")]
    AlreadyExists { entity: &'static str, id: String },
    #[error("content service: {0}")]
    Content(alp_runtime::client::CallError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl UserError {
    pub fn not_found(entity: &'static str, id: impl Into<String>) -> Self {
        UserError::NotFound { entity, id: id.into() }
    }
}

impl ServiceError for UserError {
    fn kind(&self) -> ErrorKind {
        match self {
            UserError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            UserError::NotFound { .. } => ErrorKind::NotFound,
            UserError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            UserError::Content(error) => error.kind(),
            UserError::Store(err) => err.kind(),
        }
    }
}

impl From<UserError> for tonic::Status {
    fn from(err: UserError) -> Self {
        alp_runtime::error::to_status(&err)
    }
}
