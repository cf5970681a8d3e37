//! The programs the tests need from outside Rust, installed on first use so that the one test command
//! works on a fresh machine: Debian packages with apt-get (as root), pinned cargo tools and the browser
//! test's npm packages under the work directory. A tool that cannot be had is a failure naming it and
//! how to get it, never a skipped check. A second run finds everything in place and installs nothing.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::work_dir;

/// Every program the tests and the benchmark take from Debian, with its package. They are installed
/// together, so that a fresh machine pays for one `apt-get update`.
const PACKAGES: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("chromium", "chromium"),
    ("tmux", "tmux"),
    ("wrk", "wrk"),
    ("/usr/lib/postgresql/15/bin/initdb", "postgresql-15"),
];

/// The path of `program` (a name from [`PACKAGES`], or its absolute path there), installing the
/// missing Debian packages first.
pub fn require(program: &str) -> PathBuf {
    assert!(
        PACKAGES.iter().any(|(known, _)| *known == program),
        "{program} is not in tools::PACKAGES"
    );
    if let Some(path) = find(program) {
        return path;
    }
    let _lock = install_lock();
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(program, _)| find(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        if let Err(err) = apt_install(&missing) {
            panic!("{err}");
        }
    }
    find(program).unwrap_or_else(|| panic!("{program} is still missing after apt-get install"))
}

/// `program`'s path: itself when absolute, otherwise looked up on `PATH`.
fn find(program: &str) -> Option<PathBuf> {
    let path = Path::new(program);
    if path.is_absolute() {
        return path.exists().then(|| path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    let by_hand = format!("apt-get install {}", packages.join(" "));
    if !is_root() {
        return Err(format!(
            "the tests need Debian packages that are missing; run them as root, or install them by hand: sudo {by_hand}"
        ));
    }
    eprintln!("tests: installing {} (once)...", packages.join(", "));
    let apt_get = |args: &[&str]| {
        let output = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .map_err(|err| format!("apt-get cannot run ({err}): install by hand: {by_hand}"))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "apt-get {} failed: {}",
            args[0],
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    };
    apt_get(&["update", "-qq"])?;
    apt_get(&[&["install", "-y", "-qq"], packages].concat())
}

/// Whether this process runs as root (apt-get needs it; PostgreSQL refuses it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The binary `bin` of the crate `krate` at `version`, `cargo install`ed once under the work directory.
pub fn cargo_tool(krate: &str, version: &str, bin: &str) -> PathBuf {
    let root = work_dir().join("tools").join(format!("{krate}-{version}"));
    let path = root.join("bin").join(bin);
    if path.exists() {
        return path;
    }
    let _lock = install_lock();
    if !path.exists() {
        eprintln!("tests: installing {krate} {version} with cargo (once)...");
        let status = Command::new(env!("CARGO"))
            .args(["install", krate, "--locked", "--version", version, "--root"])
            .arg(&root)
            .env_remove("RUSTFLAGS")
            .stdin(Stdio::null())
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "installing {krate} {version} with cargo failed: cargo install --locked {krate} --version {version}"
        );
    }
    path
}

/// Installs the npm packages of `dir` from its lockfile, unless that lockfile is what is installed.
pub fn npm_ci(dir: &Path) {
    let lockfile = std::fs::read(dir.join("package-lock.json")).unwrap();
    let stamp = dir.join("node_modules").join(".installed-from-lockfile");
    if std::fs::read(&stamp).is_ok_and(|installed| installed == lockfile) {
        return;
    }
    let _lock = install_lock();
    eprintln!("tests: npm ci in {} (once)...", dir.display());
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "npm ci in {} failed: the browser test needs Node.js 20 and npm",
        dir.display()
    );
    std::fs::write(stamp, lockfile).unwrap();
}

/// Held while installing: test binaries and their threads install one thing at a time.
fn install_lock() -> File {
    let file = File::create(work_dir().join("tools.lock")).unwrap();
    file.lock().unwrap();
    file
}
