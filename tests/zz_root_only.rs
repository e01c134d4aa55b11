//! The last word of `cargo test`: how many root-only tests did not run.
//!
//! Root-only tests carry `#[cfg_attr(not(jobs_root), ignore = "needs root
//! …")]` (`build.rs` sets `jobs_root` when the build runs as root). Built by
//! another user they are listed as ignored, each with its reason, and this
//! target (named to run after every other; `cargo test` runs test targets
//! in name order, and the library has no doc-tests) ends the run with one
//! line saying how many. It fails when the build and the run disagree: run
//! as root with a build made by another user, the root-only tests were
//! skipped where they must run (CI runs as root); built as root and run by
//! another user, they fail.
//!
//! The count comes from the sources: each marker counts once, or once per
//! invocation of the `macro_rules!` it sits in.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The marker with its white space taken out (rustfmt may wrap it).
const MARKER: &str = "#[cfg_attr(not(jobs_root),ignore=\"needsroot";

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["src", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    let count: usize = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .flat_map(|l| l.chars().filter(|c| *c != ' ' && *c != '\t').chain(['\n']))
                .collect();
            count_in(&code)
        })
        .sum();
    let running_as_root = nix::unistd::geteuid().is_root();
    let built_as_root = cfg!(jobs_root);
    match (built_as_root, running_as_root) {
        (false, false) => {
            println!(
                "jobs: {count} root-only tests did not run (not root; each is listed above as ignored, \"needs root\"); CI runs them as root (bash .ci/run)"
            );
            ExitCode::SUCCESS
        }
        (true, true) => {
            println!("jobs: all {count} root-only tests ran (built and run as root)");
            ExitCode::SUCCESS
        }
        (false, true) => {
            println!(
                "jobs: error: {count} root-only tests were skipped although this runs as root: the build was made as another user; run `touch build.rs` and test again"
            );
            ExitCode::FAILURE
        }
        (true, false) => {
            println!(
                "jobs: error: this build was made as root but runs as uid {}: its {count} root-only tests failed; run `touch build.rs` and test again",
                nix::unistd::geteuid()
            );
            ExitCode::FAILURE
        }
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Markers in `text` (comments, spaces and tabs taken out): one each outside
/// macros; inside a `macro_rules! m`, one per `m!` invocation in the same
/// file.
fn count_in(text: &str) -> usize {
    let mut total = 0;
    let mut rest = text;
    let mut macros: Vec<String> = Vec::new();
    // Each macro_rules! body: from its name to the next line that is only
    // `}` at the start (the house style's formatting of macros).
    while let Some(at) = rest.find("macro_rules!") {
        let before = &rest[..at];
        total += before.matches(MARKER).count();
        let after = &rest[at + "macro_rules!".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let end = after.find("\n}\n").map_or(after.len(), |e| e + 3);
        let body = &after[..end];
        if body.contains(MARKER) {
            macros.push(name);
        }
        rest = &after[end..];
    }
    total += rest.matches(MARKER).count();
    for name in macros {
        let invocations = text.matches(&format!("{name}!(")).count()
            + text.matches(&format!("{name}!{{")).count();
        total += invocations;
    }
    total
}
