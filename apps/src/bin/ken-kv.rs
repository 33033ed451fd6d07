//! `ken-kv`: the thin binary of [`ken_apps::cli::kv`] (also run as `ken app kv`).

fn main() -> std::process::ExitCode {
    ken_apps::cli::kv::main(std::env::args_os())
}
