//! The engine module (the FUSE machine included) and the handler API must stay free of I/O:
//! no tokio, no SQLite, no sockets, no clock.

use std::path::Path;

fn sources(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read engine dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read source");
            out.push((path.display().to_string(), text));
        }
    }
}

#[test]
fn engine_is_sans_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root.join("engine"), &mut files);
    for leaf in ["handler.rs", "fuse_types.rs", "task.rs"] {
        files.push((
            leaf.into(),
            std::fs::read_to_string(root.join(leaf)).expect("read a source beside the engine"),
        ));
    }
    assert!(files.len() >= 10, "found the engine sources: {files:?}");
    for machine in ["mod.rs", "wire.rs", "group.rs", "liveness.rs", "list.rs"] {
        let path = root.join("engine").join("fuse").join(machine);
        assert!(
            files.iter().any(|(p, _)| Path::new(p) == path),
            "the FUSE machine's {machine} is scanned"
        );
    }
    let forbidden = [
        "tokio",
        "rusqlite",
        "std::net",
        "UdpSocket",
        "SystemTime",
        "Instant",
        "std::fs",
        "std::thread",
        "now_wall",
        "thread_rng",
        "rand::random",
        "Store::open",
    ];
    let mut hits = Vec::new();
    for (path, text) in &files {
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                if code.contains(word) {
                    hits.push(format!("{path}:{}: `{word}`: {line}", n + 1));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "I/O in the sans-I/O engine:\n{}",
        hits.join("\n")
    );
}
