//! `ken-lock`: the thin binary of [`ken_apps::cli::lock`] (also run as `ken app lock`).

fn main() -> std::process::ExitCode {
    ken_apps::cli::lock::main(std::env::args_os())
}
