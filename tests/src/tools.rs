//! The programs the tests need from outside Rust, installed on first use so that the one test command
//! works on a fresh machine: Debian packages with apt-get (as root), pinned cargo tools and the browser
//! test's npm packages under the work directory. A tool that cannot be had is a failure naming it and
//! how to get it, never a skipped check. A second run finds everything in place and installs nothing.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::work_dir;

/// Every program the tests and the benchmark take from Debian, with its package. They are installed
/// together, so that a fresh machine pays for one `apt-get update`. (PostgreSQL 15 is not among
/// them: it comes with the machine, see `servers::Postgres`.)
const DEBIAN_PROGRAMS: &[(&str, &str)] = &[
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("chromium", "chromium"),
    ("tmux", "tmux"),
    ("wrk", "wrk"),
    ("openssl", "openssl"),
    ("nginx", "nginx"),
];

/// The path of `program` (one of [`DEBIAN_PROGRAMS`]), installing the missing Debian packages first.
pub fn require(program: &str) -> PathBuf {
    assert!(
        DEBIAN_PROGRAMS.iter().any(|(known, _)| *known == program),
        "{program} is not in tools::DEBIAN_PROGRAMS"
    );
    if let Some(path) = find(program) {
        return path;
    }
    let _lock = install_lock();
    let missing: Vec<&str> = DEBIAN_PROGRAMS
        .iter()
        .filter(|(program, _)| find(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty()
        && let Err(err) = apt_install(&missing)
    {
        panic!("{err}");
    }
    find(program).unwrap_or_else(|| panic!("{program} is still missing after apt-get install"))
}

/// `program`'s path, looked up on `PATH`, then in the sbin folders (nginx lives in /usr/sbin, which
/// a non-root `PATH` often lacks).
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn apt_install(packages: &[&str]) -> Result<(), String> {
    let by_hand = format!("apt-get install {}", packages.join(" "));
    if !is_root() {
        return Err(format!(
            "the tests need Debian packages that are missing: run the tests as root, or install them by hand: sudo {by_hand}"
        ));
    }
    say(&format!(
        "installing {} with apt-get (once)",
        packages.join(", ")
    ));
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
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The binary `bin` of the crate `krate` at `version`, `cargo install`ed once under the work directory.
pub fn cargo_tool(krate: &str, version: &str, bin: &str) -> PathBuf {
    let root = work_dir().join("tools").join(format!("{krate}-{version}"));
    let path = root.join("bin").join(bin);
    once(
        || path.exists(),
        || {
            say(&format!("installing {krate} {version} with cargo (once)"));
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
        },
    );
    path
}

/// Installs the npm packages of `dir` from its lockfile, unless that lockfile is what is installed.
pub fn npm_ci(dir: &Path) {
    let lockfile = std::fs::read(dir.join("package-lock.json")).unwrap();
    let stamp = dir.join("node_modules").join(".installed-from-lockfile");
    let installed = || std::fs::read(&stamp).is_ok_and(|installed| installed == lockfile);
    once(installed, || {
        say(&format!("npm ci in {} (once)", dir.display()));
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
        std::fs::write(&stamp, &lockfile).unwrap();
    });
}

/// The program `bin` of the PyPI package `package` at `version`, in a virtual environment of its own
/// under the work directory, installed once.
pub fn pip_tool(package: &str, version: &str, bin: &str) -> PathBuf {
    pip_tool_with(package, version, bin, &[])
}

/// [`pip_tool`], with `also` (pinned requirements, `name==version`) in the same virtual environment:
/// what the code that the program generates needs to run on that environment's `python`, beside
/// `bin`.
pub fn pip_tool_with(package: &str, version: &str, bin: &str, also: &[&str]) -> PathBuf {
    let venv = work_dir()
        .join("tools")
        .join(format!("{package}-{version}"));
    let path = venv.join("bin").join(bin);
    let mut requirements = vec![format!("{package}=={version}")];
    requirements.extend(also.iter().map(|requirement| (*requirement).to_owned()));
    // What the environment holds, so that a changed `also` installs again.
    let stamp = venv.join("installed-requirements.txt");
    let wanted = requirements.join("\n");
    once(
        || path.exists() && std::fs::read_to_string(&stamp).is_ok_and(|held| held == wanted),
        || {
            say(&format!(
                "installing {} with pip (once)",
                requirements.join(" ")
            ));
            let run = |program: &Path, args: &[&str]| {
                let status = Command::new(program)
                    .args(args)
                    .stdin(Stdio::null())
                    .status();
                assert!(
                    status.is_ok_and(|s| s.success()),
                    "{} {args:?} failed: installing {package} needs python3 with venv \
                 (apt-get install python3-venv)",
                    program.display()
                );
            };
            run(
                Path::new("python3"),
                &["-m", "venv", venv.to_str().unwrap()],
            );
            let mut args = vec!["install", "--quiet"];
            args.extend(requirements.iter().map(String::as_str));
            run(&venv.join("bin").join("pip"), &args);
            std::fs::write(&stamp, &wanted).unwrap();
        },
    );
    path
}

/// Tells the person waiting what is being installed; written past the test harness's capture.
fn say(what: &str) {
    let _ = writeln!(std::io::stderr(), "tests: {what}...");
}

/// Runs `install` unless `done`, asked again under the install lock: test binaries and their
/// threads install one thing at a time, and never the same thing twice.
fn once(done: impl Fn() -> bool, install: impl FnOnce()) {
    if done() {
        return;
    }
    let _lock = install_lock();
    if !done() {
        install();
    }
}

/// Held while installing.
fn install_lock() -> File {
    let file = File::create(work_dir().join("tools.lock")).unwrap();
    file.lock().unwrap();
    file
}
