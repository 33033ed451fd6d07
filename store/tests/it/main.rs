//! Integration tests of `ken-store`: one test binary, one module per area.
//!
//! - `roundtrip`: every `Batch` field survives commit and reopen, seen by `Recovered` and
//!   `Reader` alike.
//! - `open_errors`: every way `Store::open` and `Reader::open` refuse a file.
//! - `poison`: a failed commit poisons the handle; reopening recovers.
//! - `kill`: a child process committing in a loop is SIGKILLed at random moments; every
//!   reopen finds exactly the committed batches, each whole.
//! - `corruption`: a flipped byte is reported as `Corrupted` naming the record.
//! - `disk_full`: `SQLITE_FULL` poisons the store and loses nothing committed.
//! - `reader`: a reader next to a committing owner: never blocks it, sees snapshots.

mod common;
mod corruption;
mod disk_full;
mod kill;
mod open_errors;
mod poison;
mod reader;
mod roundtrip;
