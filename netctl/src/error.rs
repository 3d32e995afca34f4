//! Errors of the netctl library. Each names the object and the reason; the
//! binary maps them to exit codes (1 usage/validation, 2 system).

use std::io;

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user asked for something invalid or conflicting. Nothing was changed.
    #[error("{object}: {reason}")]
    Invalid { object: String, reason: String },

    /// A named object does not exist.
    #[error("{kind} {name}: not found")]
    NotFound { kind: &'static str, name: String },

    /// A system call, netlink request or helper program failed.
    #[error("{object}: {reason}")]
    System { object: String, reason: String },

    /// Several errors met while tearing down; teardown kept going.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<Error>),
}

impl Error {
    pub fn invalid(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            object: object.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(kind: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            kind,
            name: name.into(),
        }
    }

    pub fn system(object: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        Error::System {
            object: object.into(),
            reason: reason.to_string(),
        }
    }

    /// Wraps an I/O error with the object it concerned.
    pub fn io(object: impl Into<String>, err: io::Error) -> Self {
        Error::system(object, err)
    }

    /// Exit code of the `netctl` binary: 1 for usage and validation errors,
    /// 2 for system errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Invalid { .. } | Error::NotFound { .. } => 1,
            Error::System { .. } => 2,
            Error::Many(errors) => errors.iter().map(Error::exit_code).max().unwrap_or(2),
        }
    }

    /// Collapses a list of errors met during teardown into one result.
    pub fn collect(mut errors: Vec<Error>) -> Result<()> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Many(errors)),
        }
    }
}

/// Adds the object an error concerns, for errors from other libraries.
pub trait Context<T> {
    fn context(self, object: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, object: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|err| Error::system(object(), err))
    }
}
