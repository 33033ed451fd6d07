//! Help texts point at nothing a reader cannot follow: no source files, not at themselves
//! (`ken inspect --help` once said "see `ken inspect --help`"), and every document they name
//! ships in the repository.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args(args)
        .arg("--help")
        .output()
        .expect("run ken --help");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{args:?}: {text}");
    text
}

/// The subcommands listed under `Commands:` (without `help`).
fn subcommands(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

#[test]
fn help_texts_name_no_source_file_and_not_themselves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root");
    let mut commands: Vec<Vec<String>> = vec![vec![]];
    for app in ["bank", "kv", "lock", "pingpong"] {
        commands.push(vec!["app".into(), app.into()]);
    }
    let mut checked = 0;
    while let Some(cmd) = commands.pop() {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let text = help(&args);
        checked += 1;
        let name = if args.is_empty() {
            "ken".to_string()
        } else {
            format!("ken {}", args.join(" "))
        };
        for word in text.split(|c: char| c.is_whitespace() || "`(),;:\"".contains(c)) {
            let word = word.trim_end_matches('.');
            assert!(
                !word.ends_with(".rs"),
                "`{name} --help` names a source file: {word}"
            );
            if word.ends_with(".md") || word.ends_with(".toml") {
                let shipped = root.join(word).is_file()
                    || ["", "apps/deploy", "tools", "ken/inspect"]
                        .iter()
                        .any(|d| root.join(d).join(word).is_file());
                assert!(
                    shipped,
                    "`{name} --help` names {word}, which is not in the repository"
                );
            }
        }
        assert!(
            !text.contains(&format!("{name} --help")),
            "`{name} --help` points at itself:\n{text}"
        );
        if !args.starts_with(&["app"]) || args.len() == 2 {
            for sub in subcommands(&text) {
                let mut next = cmd.clone();
                next.push(sub);
                commands.push(next);
            }
        }
    }
    assert!(checked > 20, "only {checked} help texts found");
}

/// A kv client pointed at a stopped server says so in about a second (the host refuses
/// every copy: nothing listens there) and exits with "maybe applied", instead of waiting
/// out its 10-second deadline.
#[test]
fn a_kv_client_of_a_stopped_server_says_so_at_once() {
    let nothing = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        s.local_addr().expect("local addr")
    }; // closed again
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_ken"))
        .args(["app", "kv", "get", "k", "--server"])
        .arg(nothing.to_string())
        .output()
        .expect("run ken app kv get");
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "maybe applied: {text}");
    assert!(text.contains("nothing listens at"), "{text}");
    assert!(
        took < std::time::Duration::from_secs(6),
        "took {took:?}: {text}"
    );
}
