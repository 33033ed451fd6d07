//! `ken-kv` (also `ken app kv`): the key-value service (see [`crate::kv`]) and its
//! command-line client.
//!
//! ```text
//! ken-kv serve --id kv1 --listen 127.0.0.1:7000 --store kv1.db [--key-file K]
//! ken-kv serve --cluster cluster.toml --id kv1
//! ken-kv put KEY VALUE --server 127.0.0.1:7000 [--credential C]
//! ken-kv put KEY --server ...          the value from standard input (also VALUE `-`)
//! ken-kv get KEY --server ...          prints the value, or `(absent)`
//! ken-kv del KEY --server ...          prints `deleted` or `absent`
//! ken-kv cas KEY EXPECTED NEW --server ...
//! ken-kv list PREFIX --server ...      one `KEY<TAB>VALUE` line per key
//! ken-kv incr KEY N --server ...       prints the new value
//! ken-kv inspect STORE [VIEW]          the views of `ken inspect`, kv's types decoded
//! ```
//!
//! `cas`: `-` written as EXPECTED means "the key is absent" (create only if absent); `-`
//! written as NEW means "delete it". With `--literal`, `-` is an ordinary value. `cas` exits
//! 0 if it swapped and 3 if it did not (it then prints the current value).
//!
//! Every client subcommand takes `--json` (one JSON object on stdout). A failed call is one
//! line on stderr, `error: ...`, and its exit code says whether the request was applied:
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | done |
//! | 1 | NOT applied: the service refused it (`incr` of a value that is not an integer, a key too long, no credential, ...) or it was never sent |
//! | 2 | usage error (bad flags); nothing was sent |
//! | 3 | `cas` did not swap (the current value is printed) |
//! | 4 | MAYBE applied: no answer before the deadline (check with `get`) |
//! | 5 | applied, but the reply could not be read |
//!
//! `--server` takes `HOST:PORT` (a name is resolved once per call), `IPV4:PORT` or
//! `[IPV6]:PORT`. A server with a cluster key answers only credentialed clients: pass
//! `--credential FILE` (from `ken client-credential`); the client then speaks as that
//! credential's client id, numbering its requests from the wall clock (microseconds), so
//! that a loop of calls is one client of the reply cache, not thousands. Without a
//! credential each invocation is a new anonymous client (a fresh random id). Either way,
//! after a timeout this command line cannot retry the same request exactly once: check with
//! `get`. Programs that need exactly-once retries use `ken::Client` and `retry_last`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli;
use crate::kv::{self, Kv, Reply, Request};
use clap::{Args as ClapArgs, Parser, Subcommand};
use ken::{ClientError, ClientId, ClientOptions};
use serde_json::json;

/// A key-value store whose every request is applied exactly once, across crashes.
#[derive(Debug, Parser)]
#[command(name = "ken-kv", version, after_help = AFTER_HELP)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

/// Limits and exit codes, for `--help`.
const AFTER_HELP: &str = "\
Limits: a key is at most 1024 bytes of UTF-8, a value at most 63228 bytes (one reply must \
fit a datagram), `list` returns at most 1000 rows.

Exit codes of the client commands: 0 done; 1 NOT applied (refused by the service, or never \
sent); 2 usage error; 3 `cas` did not swap; 4 MAYBE applied (no answer before the deadline: \
check with `get`); 5 applied but the reply could not be read.";

/// Exit codes of the client commands (module docs).
mod exit {
    pub const NOT_APPLIED: u8 = 1;
    pub const NOT_SWAPPED: u8 = 3;
    pub const MAYBE_APPLIED: u8 = 4;
    pub const UNREADABLE_REPLY: u8 = 5;
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (until killed).
    Serve(ServeArgs),
    /// Set KEY to VALUE (VALUE omitted or `-`: read it from standard input, a trailing newline
    /// dropped). A key is at most 1024 bytes of UTF-8, a value at most 63228 bytes.
    Put {
        key: String,
        value: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the value of KEY, or `(absent)`.
    Get {
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete KEY.
    Del {
        key: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Set KEY to NEW only if it holds EXPECTED (`-` = absent; NEW `-` = delete). Exit 3 if
    /// it did not swap.
    Cas {
        key: String,
        expected: String,
        new: String,
        /// Treat `-` as an ordinary value, not as "absent".
        #[arg(long)]
        literal: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the keys starting with PREFIX (and their values), in byte order.
    List {
        /// The prefix (empty = every key).
        #[arg(default_value = "")]
        prefix: String,
        /// Most rows to print (the service caps it at 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only keys after this one (page with the last key printed).
        #[arg(long, value_name = "KEY")]
        start_after: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add N (may be negative) to the integer at KEY (absent = 0); print the new value.
    Incr {
        key: String,
        #[arg(allow_hyphen_values = true)]
        n: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Look inside a store, decoding kv's types (the views of `ken inspect`).
    Inspect(ken_inspect::Args),
    /// What this binary would migrate in a store (`migrate STORE --dry-run`).
    Migrate(cli::MigrateArgs),
}

#[derive(Debug, ClapArgs)]
struct ServeArgs {
    #[command(flatten)]
    process: cli::ProcessArgs,
}

#[derive(Debug, ClapArgs)]
struct ClientArgs {
    /// The service's address: HOST:PORT, IPV4:PORT or [IPV6]:PORT.
    #[arg(long)]
    server: ken::PeerAddress,
    /// A client credential (`ken client-credential`), needed by a server with a cluster key.
    #[arg(long, value_name = "FILE")]
    credential: Option<std::path::PathBuf>,
    /// Print one JSON object instead of plain text.
    #[arg(long)]
    json: bool,
    /// Give up after this many milliseconds without an answer.
    #[arg(long, default_value_t = 10_000)]
    deadline_ms: u64,
}

/// Runs `ken-kv` with command line `args` (the first is the program name); usage errors
/// exit the process with clap's status 2.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    cli::init_tracing();
    let args = Args::parse_from(args);
    let (request, client) = match args.command {
        Command::Serve(s) => {
            return match s.process.config(&[]) {
                Ok(config) => cli::run_to_exit(config, Kv),
                Err(e) => cli::usage("ken-kv", e),
            };
        }
        Command::Inspect(args) => {
            return ken_inspect::main(&args, &crate::inspect::kv());
        }
        Command::Migrate(args) => return cli::migrate(&args, |_| Kv),
        Command::Put { key, value, client } => {
            let value = match value.filter(|v| v != "-") {
                Some(v) => v,
                None => match read_stdin_value() {
                    Ok(v) => v,
                    Err(e) => return cli::usage("ken-kv", e),
                },
            };
            (Request::Put { key, value }, client)
        }
        Command::Get { key, client } => (Request::Get { key }, client),
        Command::Del { key, client } => (Request::Delete { key }, client),
        Command::Cas {
            key,
            expected,
            new,
            literal,
            client,
        } => {
            let marker = |v: String| (literal || v != "-").then_some(v);
            let (expected, new) = (marker(expected), marker(new));
            (Request::Cas { key, expected, new }, client)
        }
        Command::List {
            prefix,
            limit,
            start_after,
            client,
        } => (
            Request::List {
                prefix,
                limit,
                start_after,
            },
            client,
        ),
        Command::Incr { key, n, client } => (Request::Incr { key, by: n }, client),
    };
    let server = match client.server.resolve() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "error: cannot resolve --server {}: {e} (not sent)",
                client.server
            );
            return ExitCode::from(exit::NOT_APPLIED);
        }
    };
    let credential = match &client.credential {
        None => None,
        Some(path) => match ken::ClientCredential::load(path) {
            Ok(c) => Some(c),
            Err(e) => return cli::usage("ken-kv", e),
        },
    };
    match call(&request, &client, server, credential) {
        Ok(reply) => print_reply(&request, reply, client.json),
        Err(e) => {
            eprintln!("error: {e}");
            let code = match e {
                ClientError::Timeout { .. }
                | ClientError::NotListening { .. }
                | ClientError::Io(_) => {
                    eprintln!("(maybe applied; this command cannot retry the same request: check with `ken-kv get`)");
                    exit::MAYBE_APPLIED
                }
                ClientError::Decode(_) => exit::UNREADABLE_REPLY,
                _ => exit::NOT_APPLIED,
            };
            ExitCode::from(code)
        }
    }
}

/// The value of `put` from standard input: all of it, one trailing newline dropped.
fn read_stdin_value() -> Result<String, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(kv::VALUE_BYTES_MAX as u64 + 2)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the value from standard input: {e}"))?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.len() > kv::VALUE_BYTES_MAX {
        return Err(format!(
            "the value on standard input is longer than {} bytes, the longest a value may be",
            kv::VALUE_BYTES_MAX
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| "the value on standard input is not UTF-8 text".to_string())
}

fn call(
    request: &Request,
    args: &ClientArgs,
    server: SocketAddr,
    credential: Option<ken::ClientCredential>,
) -> Result<Reply, ClientError> {
    let options = ClientOptions {
        deadline: Duration::from_millis(args.deadline_ms),
        ..ClientOptions::default()
    };
    let Some(credential) = credential else {
        let mut client = kv::KvClient::with_id(ClientId::random(), 1, options)?;
        return client.call(server, request);
    };
    // One identity across invocations: request numbers from the wall clock, increasing from
    // call to call; a clock that went back gets `TooOld` (not applied), and the request is
    // sent once more, numbered after the last one the server applied.
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
        .max(1);
    let mut client = kv::KvClient::with_credential(credential.clone(), now_us, options.clone())?;
    match client.call(server, request) {
        Err(ClientError::TooOld { last, .. }) => {
            let mut client = kv::KvClient::with_credential(credential, last + 1, options)?;
            client.call(server, request)
        }
        other => other,
    }
}

/// Prints `reply` and returns the exit code: 0, except 1 for an error reply and 3 for a
/// `cas` that did not swap.
fn print_reply(request: &Request, reply: Reply, as_json: bool) -> ExitCode {
    let key = match request {
        Request::Get { key }
        | Request::Put { key, .. }
        | Request::Delete { key }
        | Request::Cas { key, .. }
        | Request::Incr { key, .. } => key.as_str(),
        Request::List { prefix, .. } => prefix.as_str(),
    };
    let (text, value, code) = match reply {
        Reply::Value(v) => (
            v.clone().unwrap_or_else(|| "(absent)".into()),
            json!({"key": key, "value": v}),
            0,
        ),
        Reply::Put { previous } => ("ok".into(), json!({"key": key, "previous": previous}), 0),
        Reply::Deleted(existed) => (
            if existed { "deleted" } else { "absent" }.into(),
            json!({"key": key, "deleted": existed}),
            0,
        ),
        Reply::Cas { swapped, current } => {
            let text = if swapped {
                "swapped".to_string()
            } else {
                let now = current.as_deref().unwrap_or("(absent)");
                format!("not swapped: the value is {now}")
            };
            let value = json!({"key": key, "swapped": swapped, "current": current});
            (text, value, if swapped { 0 } else { exit::NOT_SWAPPED })
        }
        Reply::List { rows, truncated } => {
            let mut text: Vec<String> = rows.iter().map(|(k, v)| format!("{k}\t{v}")).collect();
            if truncated {
                eprintln!(
                    "(more keys match: run again with --start-after {})",
                    rows.last().map_or("''", |(k, _)| k.as_str())
                );
            }
            if text.is_empty() {
                text.push("(no keys)".into());
            }
            let rows: Vec<_> = rows
                .iter()
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect();
            let value = json!({"prefix": key, "rows": rows, "truncated": truncated});
            (text.join("\n"), value, 0)
        }
        Reply::Incr(n) => (n.to_string(), json!({"key": key, "value": n}), 0),
        Reply::Error(e) => {
            if as_json {
                println!("{}", json!({"key": key, "error": e}));
            } else {
                eprintln!("error: the service did not apply the request: {e}");
            }
            return ExitCode::from(exit::NOT_APPLIED);
        }
    };
    if as_json {
        println!("{value}");
    } else {
        println!("{text}");
    }
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limits_in_the_help_are_the_real_ones() {
        assert!(AFTER_HELP.contains(&format!("at most {} bytes of UTF-8", kv::KEY_BYTES_MAX)));
        assert!(AFTER_HELP.contains(&format!("a value at most {} bytes", kv::VALUE_BYTES_MAX)));
        assert!(AFTER_HELP.contains(&format!("at most {} rows", kv::LIST_ROWS_MAX)));
    }
}
