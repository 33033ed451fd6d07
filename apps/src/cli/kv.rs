//! `ken-kv` (also `ken app kv`): the key-value service (see [`crate::kv`]) and its
//! command-line client.
//!
//! ```text
//! ken-kv serve --id kv1 --listen 127.0.0.1:7000 --store kv1.db
//! ken-kv put KEY VALUE --server 127.0.0.1:7000
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
//! Every client subcommand takes `--json` (one JSON object on stdout). A failed call (no
//! answer before the deadline, refused, undecodable reply, ...) is one line on stderr,
//! `error: ...`, and exit code 1; a request the service refused to apply (`incr` of a value
//! that is not an integer, a key too long) is also exit 1. Usage errors are exit 2.
//!
//! Each invocation is a new client (a fresh random id, request number 1), so after a timeout
//! this command line cannot retry the same request exactly once: check with `get`. Programs
//! that need exactly-once retries use `ken::Client` and `retry_last`.

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
#[command(name = "ken-kv", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (until killed).
    Serve(ServeArgs),
    /// Set KEY to VALUE.
    Put {
        key: String,
        value: String,
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
    /// The service's address.
    #[arg(long)]
    server: SocketAddr,
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
            let config = s.process.config();
            return cli::run_to_exit(config, Kv);
        }
        Command::Inspect(args) => {
            return ken_inspect::main(&args, &crate::inspect::kv());
        }
        Command::Migrate(args) => return cli::migrate(&args, |_| Kv),
        Command::Put { key, value, client } => (Request::Put { key, value }, client),
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
            client,
        } => (Request::List { prefix, limit }, client),
        Command::Incr { key, n, client } => (Request::Incr { key, by: n }, client),
    };
    match call(&request, &client) {
        Ok(reply) => print_reply(&request, reply, client.json),
        Err(e) => {
            eprintln!("error: {e}");
            if matches!(e, ClientError::Timeout { .. }) {
                eprintln!("(this command cannot retry the same request: check with `ken-kv get`)");
            }
            ExitCode::FAILURE
        }
    }
}

fn call(request: &Request, args: &ClientArgs) -> Result<Reply, ClientError> {
    let options = ClientOptions {
        deadline: Duration::from_millis(args.deadline_ms),
        ..ClientOptions::default()
    };
    let mut client = kv::KvClient::with_id(ClientId::random(), 1, options)?;
    client.call(args.server, request)
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
            (text, value, if swapped { 0 } else { 3 })
        }
        Reply::List { rows, truncated } => {
            let mut text: Vec<String> = rows.iter().map(|(k, v)| format!("{k}\t{v}")).collect();
            if truncated {
                eprintln!("(more keys match: raise --limit or list a longer prefix)");
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
            return ExitCode::FAILURE;
        }
    };
    if as_json {
        println!("{value}");
    } else {
        println!("{text}");
    }
    ExitCode::from(code)
}
