//! berth's backups.
//!
//! A backup is a consistent copy of one source (a SQLite file, a PostgreSQL or MySQL dump, a
//! directory or volume, berth's own state) streamed through zstd and age to every destination
//! (a directory on the server, S3-compatible storage), then read back from each, decrypted,
//! decompressed, checksummed and checked before its record is written beside it. Only copies
//! with a record are backups; retention and restores work from the records, so a new server
//! with the bucket and an age identity can list and restore everything.
//!
//! This crate knows nothing of Docker: the agent supplies the sources and checks that run
//! inside containers through [`source::Source`] and [`source::Consumer`].

pub mod archive;
pub mod destination;
pub mod error;
pub mod keys;
pub mod meta;
pub mod pipeline;
pub mod retention;
pub mod runner;
pub mod schedule;
pub mod source;
pub mod sqlite;

pub use destination::{Destination, S3Settings};
pub use error::{BackupError, Result};
pub use keys::{Identities, Recipient};
pub use meta::{BackupMeta, ContentKind, Reason};
pub use retention::Keep;
pub use runner::{Clock, Event, EventSink, RunOutcome, Runner, SystemClock};
pub use source::{Consumer, Source};
