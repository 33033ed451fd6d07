//! The `ken-tools` library: what the `ken` command shares with other binaries.
//!
//! - [`inspect`]: the checkpoint inspection views behind `ken inspect STORE [VIEW]`, and the
//!   helper that gives every app binary an `inspect` subcommand decoding its own types
//!   (`ken-bank inspect STORE state`). The field names of its JSON output are documented in
//!   `tools/INSPECT.md` and on the types of [`inspect::output`].
//!
//! **Architecture invariant: ken-tools never depends on ken-apps.** The app binaries depend
//! on this library (for `inspect`), and cargo forbids a dependency cycle between packages
//! whatever the targets (a library and a binary of one package are one node). The `ken`
//! binary runs app binaries as processes only. The alternatives were worse: the runtime
//! crate `ken` would have carried a command line and JSON rendering it does not need, and a
//! helper inside ken-apps would have made every tool depend on the example apps. If a tool
//! ever needs app code as a library (say `bank::audit` in a torture run), move [`inspect`]
//! into a crate of its own that both depend on: it uses only `ken-store`, `ken` (the FUSE
//! group record type, in `inspect::fuse`), `clap`, `serde`, `serde_json` and `thiserror`,
//! never the rest of this crate.

pub mod inspect;
