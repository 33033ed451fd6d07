//! Command-line pieces shared by the app binaries.

use std::net::SocketAddr;
use std::str::FromStr;

use ken::ProcessId;

/// A `--peer ID=ADDR` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerArg {
    pub id: ProcessId,
    pub addr: SocketAddr,
}

impl FromStr for PeerArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, addr) = s
            .split_once('=')
            .ok_or_else(|| format!("expected ID=ADDR (for example b=127.0.0.1:7001), got `{s}`"))?;
        let id = ProcessId::new(id).map_err(|e| format!("bad peer id `{id}`: {e}"))?;
        let addr = addr
            .parse()
            .map_err(|e| format!("bad address `{addr}` for peer {id}: {e}"))?;
        Ok(PeerArg { id, addr })
    }
}

/// Parses a process id argument.
pub fn parse_id(s: &str) -> Result<ProcessId, String> {
    ProcessId::new(s).map_err(|e| format!("bad process id `{s}`: {e}"))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `warn`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs a handler with `config` and maps the outcome to a process exit code: 0 when the
/// handler finished, 1 (with the error on stderr) when the process had to stop.
pub fn run_to_exit<H: ken::Handler>(config: ken::Config, handler: H) -> std::process::ExitCode {
    match ken::run(config.with_env_switches(), handler) {
        Ok(ken::Exit::Finished { .. }) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
