//! `cargo generate` as a person runs it: in a terminal (a tmux pane), answering every prompt. Bad
//! answers get a clear message, and the post hook's next steps are printed and work as printed.
//!
//! Needs tmux, installed with apt-get (as root) when missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use actix_api_auth_tests::{Client, Service, binary, free_port, repo_root, tools, work_dir};

/// A tmux session running one command, read through its screen.
struct Terminal {
    tmux: PathBuf,
    session: String,
}

impl Terminal {
    fn start(session: &str, cwd: &Path, command: &str) -> Self {
        let tmux = tools::require("tmux");
        let _ = Command::new(&tmux)
            .args(["kill-session", "-t", session])
            .output();
        // The pane stays open after the command, showing how it ended.
        let shell = format!("cd {} && {command}; echo EXIT=$?; sleep 600", cwd.display());
        let started = Command::new(&tmux)
            .args([
                "new-session",
                "-d",
                "-s",
                session,
                "-x",
                "220",
                "-y",
                "60",
                &shell,
            ])
            .env("USER", "template-tests")
            .env("NO_COLOR", "1")
            .status()
            .expect("tmux runs");
        assert!(started.success());
        Self {
            tmux,
            session: session.to_owned(),
        }
    }

    /// Everything shown so far, wrapped lines joined.
    fn screen(&self) -> String {
        let output = Command::new(&self.tmux)
            .args([
                "capture-pane",
                "-p",
                "-J",
                "-S",
                "-500",
                "-t",
                &self.session,
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Waits until the screen shows what `seen` looks for; returns the screen.
    fn wait_until(&self, what: &str, seen: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if seen(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what} never appeared:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for(&self, text: &str) -> String {
        self.wait_until(&format!("{text:?}"), |screen| screen.contains(text))
    }

    fn keys(&self, keys: &[&str]) {
        let status = Command::new(&self.tmux)
            .args(["send-keys", "-t", &self.session])
            .args(keys)
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn answer(&self, prompt: &str, text: &str) {
        self.wait_for(prompt);
        self.keys(&["-l", text]);
        self.keys(&["Enter"]);
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new(&self.tmux)
            .args(["kill-session", "-t", &self.session])
            .output();
    }
}

const KEY_PREFIX: &str = "Prefix of every issued key";
const ROUTE_PREFIX: &str = "Where the key-management routes are mounted";
const DOCS_PATH: &str = "Where Swagger UI is mounted";
const DATABASE: &str = "Where keys are stored by default";
const REDIS_CACHE: &str = "Put a Redis cache in front of the database?";

fn cargo_generate() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(Path::parent)
        .unwrap()
        .join("cargo-generate")
}

/// Starts `cargo generate` on this template in a fresh folder, and picks the sub-template and name.
fn prompted(session: &str, name: &str) -> (Terminal, PathBuf) {
    let folder = work_dir().join("interactive").join(session);
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).unwrap();
    let command = format!(
        "{} generate --path {}",
        cargo_generate().display(),
        repo_root().display()
    );
    let terminal = Terminal::start(session, &folder, &command);
    terminal.wait_for("Which sub-template should be expanded?");
    terminal.keys(&["Enter"]);
    terminal.answer("Project Name", name);
    (terminal, folder)
}

#[test]
fn bad_answers_get_a_clear_message() {
    let (terminal, folder) = prompted("cg-bad", "refused-svc");
    terminal.answer(KEY_PREFIX, "Bad-Prefix");
    terminal.wait_for(r#""Bad-Prefix" is not a valid value for key_prefix"#);
    // Asked again, below the message, with the rule in the question.
    terminal.wait_until("the question again", |screen| {
        let (_, after) = screen
            .split_once("is not a valid value for key_prefix")
            .unwrap();
        after.contains(KEY_PREFIX)
    });
    terminal.keys(&["-l", "acme_"]);
    terminal.keys(&["Enter"]);
    // Valid on its own, and clashing with a route the service has: the pre hook refuses it.
    terminal.answer(ROUTE_PREFIX, "/health/keys");
    terminal.answer(DOCS_PATH, "/swagger");
    terminal.wait_for(DATABASE);
    terminal.keys(&["Down"]);
    terminal.keys(&["Enter"]);
    terminal.wait_for(REDIS_CACHE);
    terminal.keys(&["n"]);
    let screen = terminal.wait_for("EXIT=");
    assert!(
        screen.contains(r#"route_prefix "/health/keys" clashes with the service's route /health: choose another prefix"#),
        "{screen}"
    );
    assert!(screen.contains("EXIT=1"), "{screen}");
    // cargo-generate makes the destination folder before the hook runs; nothing is put in it.
    let destination = folder.join("refused-svc");
    let left = std::fs::read_dir(&destination).map_or(0, |entries| entries.count());
    assert_eq!(left, 0, "nothing is generated in {}", destination.display());
}

#[test]
fn next_steps_are_printed_and_work() {
    let (terminal, folder) = prompted("cg-good", "prompted-svc");
    terminal.answer(KEY_PREFIX, "acme_");
    terminal.answer(ROUTE_PREFIX, "/v2/keys");
    terminal.answer(DOCS_PATH, "/swagger");
    terminal.wait_for(DATABASE);
    terminal.keys(&["Enter"]);
    terminal.wait_for(REDIS_CACHE);
    terminal.keys(&["n"]);
    let screen = terminal.wait_for("EXIT=");
    assert!(screen.contains("EXIT=0"), "{screen}");

    let steps: Vec<&str> = screen
        .lines()
        .map(str::trim)
        .skip_while(|line| *line != "Next steps for prompted-svc:")
        .filter(|line| !line.is_empty() && !line.starts_with("EXIT="))
        .collect();
    assert_eq!(steps.get(1), Some(&"cd prompted-svc"), "{screen}");
    let mint = steps
        .iter()
        .find(|line| line.starts_with("cargo run -- keys create"))
        .expect("a step mints the first key");
    assert!(steps.iter().any(|line| line.starts_with("cargo run ")));
    assert!(
        steps.contains(&"Swagger UI:   http://127.0.0.1:8080/swagger/"),
        "{steps:?}"
    );
    assert!(
        steps
            .iter()
            .any(|line| line.starts_with("Key routes:   http://127.0.0.1:8080/v2/keys ")),
        "{steps:?}"
    );

    // Follow them: in the project, mint the key as printed, serve, use both URLs.
    let project = folder.join("prompted-svc");
    let bin = binary(&project, "prompted-svc");
    let args: Vec<&str> = mint
        .trim_start_matches("cargo run -- ")
        .split('#')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let minted = Command::new(&bin)
        .args(&args)
        .current_dir(&project)
        .output()
        .unwrap();
    assert!(
        minted.status.success(),
        "{}",
        String::from_utf8_lossy(&minted.stderr)
    );
    let admin = String::from_utf8(minted.stdout).unwrap().trim().to_owned();
    assert!(admin.starts_with("acme_"), "{admin}");

    let mut serve = Command::new(&bin);
    serve.current_dir(&project);
    let service = Service::spawn(serve, &[("RUST_LOG", "warn")], free_port());
    let client = Client::new(&service.base_url);
    assert!(client.text("/swagger/").contains("swagger-ui"));
    let (status, list) = client.send("GET", "/v2/keys", Some(&admin), None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 1);
    assert!(service.stop().success());
}
