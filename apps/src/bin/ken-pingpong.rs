//! `ken-pingpong`: the thin binary of [`ken_apps::cli::pingpong`] (also run as `ken app pingpong`).

fn main() -> std::process::ExitCode {
    ken_apps::cli::pingpong::main(std::env::args_os())
}
