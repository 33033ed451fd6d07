//! The `ken` command line: `demo`, `inspect`, `torture`, `bench` (subcommands arrive with their issues).

fn main() {
    eprintln!("ken: no subcommands yet; see README.md");
    std::process::exit(2);
}
