//! `ken-bank`: the thin binary of [`ken_apps::cli::bank`] (also run as `ken app bank`).

fn main() -> std::process::ExitCode {
    ken_apps::cli::bank::main(std::env::args_os())
}
