//! The module dependency direction drawn in `src/lib.rs` is enforced here:
//! every `crate::…` path in `src/` must point to a module of a lower layer
//! (or its own). A new import that points upwards — a cycle in the making —
//! fails this test and names the file and the import.

use std::path::{Path, PathBuf};

/// (module, layer): a module may use only modules of a lower layer. Leaf
/// submodules are listed on their own; everything else belongs to its
/// top-level module.
const LAYERS: &[(&str, u32)] = &[
    ("testing", 90),
    ("cli", 90),
    ("app", 80),
    ("insights", 55),
    ("client", 85),
    ("proxy", 70),
    ("admin", 70),
    ("demo", 70),
    ("mcp::stdio", 66),
    ("server", 65),
    ("prompts", 62),
    ("notify", 62),
    ("gate", 60),
    ("policy", 50),
    ("upstream", 50),
    ("history", 50),
    ("audit", 50),
    ("identity", 50),
    ("trace", 45),
    ("audit::writer", 45),
    ("store", 40),
    ("telemetry", 40),
    ("tls", 40),
    ("config", 30),
    // Types shared downwards: they import only leaves.
    ("gate::model", 20),
    ("audit::chain", 20),
    ("prompts::model", 20),
    ("prompts::template", 25),
    // Leaves: they import nothing of Latch's.
    ("policy::decision", 10),
    ("history::stats", 10),
    ("digest", 10),
    ("http_util", 10),
    ("mcp", 15),
    ("throttle", 10),
    ("ticker", 10),
    ("threads", 10),
];

/// The layer node `path` (`gate::model::State`) belongs to.
fn node(path: &str) -> Option<(&'static str, u32)> {
    LAYERS
        .iter()
        .filter(|(m, _)| path == *m || path.starts_with(&format!("{m}::")))
        .max_by_key(|(m, _)| m.len())
        .copied()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/gate/machine.rs` → `gate::machine`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("::")
}

/// Every `crate::a::b` path in `text`, outside comments.
fn crate_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i + "crate::".len()..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            out.push(tail[..end].trim_end_matches(':').to_string());
            rest = &tail[end..];
        }
    }
    out
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" || module == "main" {
            continue;
        }
        let from = node(&module)
            .unwrap_or_else(|| panic!("{module} has no layer: add it to LAYERS and lib.rs"));
        let text = std::fs::read_to_string(file).unwrap();
        for path in crate_paths(&text) {
            let Some(to) = node(&path) else {
                problems.push(format!("{}: crate::{path} is in no layer", file.display()));
                continue;
            };
            if to.0 != from.0 && to.1 >= from.1 {
                problems.push(format!(
                    "{}: {} (layer {}) uses crate::{path} ({}, layer {})",
                    file.display(),
                    from.0,
                    from.1,
                    to.0,
                    to.1
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "imports against the layering:\n{}",
        problems.join("\n")
    );
}

#[test]
fn leaves_import_nothing_of_ours() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for leaf in [
        "digest.rs",
        "http_util.rs",
        "throttle.rs",
        "policy/decision.rs",
        "history/stats.rs",
    ] {
        let text = std::fs::read_to_string(src.join(leaf)).unwrap();
        let used: Vec<String> = crate_paths(&text);
        assert!(used.is_empty(), "{leaf} is a leaf but uses {used:?}");
    }
}

#[test]
fn the_checker_sees_an_upward_import() {
    assert_eq!(
        crate_paths("use crate::gate::Gate; // crate::app"),
        vec!["gate::Gate"]
    );
    let store = node("store::sqlite").unwrap();
    let gate = node("gate::Gate").unwrap();
    assert!(gate.1 >= store.1, "store → gate would be flagged");
    assert_eq!(node("gate::model::State").unwrap().0, "gate::model");
}
