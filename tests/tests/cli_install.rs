//! The `seatkeeper` command as a user gets it: `--version`, shell completions, and
//! `cargo install --path local --locked` (as README.md says to put it on the PATH).

use std::path::Path;
use std::process::Command;

use seatkeeper_tests::{seatkeeper_bin, unique};

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(seatkeeper_bin()).args(args).output().expect("run seatkeeper");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn version_is_the_workspace_version() {
    let (ok, stdout, stderr) = run(&["--version"]);
    assert!(ok, "seatkeeper --version failed: {stderr}");
    // This crate's version is the workspace's (`version.workspace = true`), as the binary's is.
    assert_eq!(stdout.trim(), format!("seatkeeper {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn completions_print_a_script_for_each_shell() {
    let (ok, bash, stderr) = run(&["completions", "bash"]);
    assert!(ok, "completions bash failed: {stderr}");
    assert!(
        bash.contains("_seatkeeper()") && bash.contains("complete -F _seatkeeper"),
        "not a bash completion script:\n{bash}"
    );
    for sub in ["serve", "sweep", "migrate", "admin", "completions", "force-cleanup"] {
        assert!(bash.contains(sub), "the bash completions do not know {sub:?}");
    }
    let (ok, zsh, _) = run(&["completions", "zsh"]);
    assert!(ok && zsh.starts_with("#compdef seatkeeper"), "not a zsh completion script:\n{zsh}");
    let (ok, fish, _) = run(&["completions", "fish"]);
    assert!(ok && fish.contains("complete -c seatkeeper"), "not a fish completion script:\n{fish}");
    let (ok, _, stderr) = run(&["completions", "tcsh"]);
    assert!(!ok && stderr.contains("possible values"), "an unknown shell should be a usage error: {stderr}");
}

/// A closed pipe (`seatkeeper completions bash | head`) ends the command quietly, not in a panic.
#[test]
fn completions_into_a_closed_pipe_do_not_panic() {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("'{}' completions bash | head -c 1 >/dev/null", seatkeeper_bin().display()))
        .output()
        .expect("run sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `cargo install --path local --locked` works from the checkout: the lock file is complete and
/// the binary it installs runs. Built `--debug` so that it reuses the workspace's debug build
/// (the release build is the same crate graph in another profile, minutes longer).
#[test]
fn cargo_install_path_local_locked() {
    let root = std::env::temp_dir().join(unique("seatkeeper-install-"));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["install", "--path", "local", "--locked", "--debug", "--root"])
        .arg(&root)
        .current_dir(repo)
        .output()
        .expect("run cargo install");
    assert!(out.status.success(), "cargo install failed: {}", String::from_utf8_lossy(&out.stderr));
    let installed = root.join("bin").join(format!("seatkeeper{}", std::env::consts::EXE_SUFFIX));
    let version = Command::new(&installed).arg("--version").output().expect("run the installed seatkeeper");
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("seatkeeper {}", env!("CARGO_PKG_VERSION")));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn readme_says_how_to_install_it() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).expect("README.md");
    assert!(
        readme.contains("cargo install --path local --locked"),
        "README.md no longer says how to install seatkeeper"
    );
}
