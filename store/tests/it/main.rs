//! Integration tests of `ken-store`: one test binary, one module per area.
//!
//! - `audit`: the cross-store audit names pairs whose stores disagree.
//! - `copy`: consistent copies of a live store, installing one (a standby's seed),
//!   `Batch::check`, a `Batch` through serde.
//! - `roundtrip`: every `Batch` field survives commit and reopen, seen by `Recovered` and
//!   `Reader` alike.
//! - `open_errors`: every way `Store::open` and `Reader::open` refuse a file.
//! - `poison`: a failed commit poisons the handle; reopening recovers.
//! - `kill`: a child process committing in a loop is SIGKILLed at random moments; every
//!   reopen finds exactly the committed batches, each whole.
//! - `migration`: format-2 stores are migrated at open, all or nothing.
//! - `corruption`: a flipped byte is reported as `Corrupted` naming the record.
//! - `history`: lost history (a damaged or deleted WAL, an older copy, a truncated or
//!   deleted database) is refused; a torn last transaction is accepted.
//! - `disk_full`: `SQLITE_FULL` poisons the store and loses nothing committed.
//! - `reader`: a reader next to a committing owner: never blocks it, sees snapshots.
//! - `wal_size`: the WAL file is preallocated by the page size and cut back after a large
//!   batch grew it (a restart reads the whole file).

mod audit;
mod common;
mod copy;
mod corruption;
mod disk_full;
mod history;
mod journal;
mod kill;
mod migration;
mod open_errors;
mod poison;
mod reader;
mod roundtrip;
mod wal_size;
