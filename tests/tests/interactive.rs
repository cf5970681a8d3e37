//! `cargo generate` as a person runs it: in a terminal (a tmux pane), answering every prompt. Bad
//! answers get a clear message, and the post hook's next steps are printed and work as printed.
//! The getting-started page is run as written, and shows what its commands print.
//!
//! Needs tmux, installed with apt-get (as root) when missing.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use actix_api_auth_tests::{
    Client, Service, binary, build_lock, cargo_command, free_port, repo_root, tools, work_dir,
};
use regex::Regex;

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

/// What a page shows of one command: the command, and the lines it prints (`…` alone stands for any
/// number of lines, `…` within a line for any text).
#[derive(Debug)]
struct Step {
    command: String,
    shown: Vec<String>,
}

/// What the getting-started page asks of the reader, in order: commands to run (its `console`
/// blocks) and code to add (its `rust` blocks).
#[derive(Debug)]
enum Instruction {
    Run(Step),
    Code(String),
}

fn instructions(page: &str) -> Vec<Instruction> {
    let mut found = Vec::new();
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        let block = || lines.clone().take_while(|l| *l != "```").map(str::to_owned);
        match line {
            "```console" => {
                for line in block() {
                    match line.strip_prefix("$ ") {
                        Some(command) => found.push(Instruction::Run(Step {
                            command: command.to_owned(),
                            shown: Vec::new(),
                        })),
                        None => match found.last_mut() {
                            Some(Instruction::Run(step)) => step.shown.push(line),
                            _ => panic!("output before any command: {line}"),
                        },
                    }
                }
            }
            "```rust" | "```rust,ignore" => {
                let code: Vec<String> = block().filter(|l| !l.starts_with("# ")).collect();
                found.push(Instruction::Code(code.join("\n") + "\n"));
            }
            _ => continue,
        }
        lines.by_ref().take_while(|l| *l != "```").for_each(drop);
    }
    found
}

/// Whether `printed` (its non-empty lines, trimmed) is what `shown` shows.
fn shows(shown: &[String], printed: &str) -> bool {
    let pattern = |line: &str| {
        let parts: Vec<String> = line.trim().split('…').map(regex::escape).collect();
        Regex::new(&format!("^{}$", parts.join(".*"))).unwrap()
    };
    let shown: Vec<Option<Regex>> = shown
        .iter()
        .map(|line| (line.trim() != "…").then(|| pattern(line)))
        .collect();
    let printed: Vec<&str> = printed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    fn matches(shown: &[Option<Regex>], printed: &[&str]) -> bool {
        match shown.split_first() {
            None => printed.is_empty(),
            Some((None, rest)) => (0..=printed.len()).any(|skip| matches(rest, &printed[skip..])),
            Some((Some(line), rest)) => printed
                .split_first()
                .is_some_and(|(first, after)| line.is_match(first) && matches(rest, after)),
        }
    }
    matches(&shown, &printed)
}

/// Settings a developer's shell may hold, which a newcomer's does not.
const YOUR_SETTINGS: [&str; 5] = ["PORT", "HOST", "DATABASE_URL", "REDIS_URL", "RUST_LOG"];

/// A shell the page's commands run in, one after another, so that variables carry over.
struct Shell {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    output: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Shell {
    fn start(project_parent: &Path) -> Self {
        // As `cargo_command` sets them: the same target directory and profile, so nothing is built
        // twice.
        let cargo = cargo_command(project_parent);
        let mut command = Command::new("bash");
        command.current_dir(project_parent);
        for (name, value) in cargo.get_envs() {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        for unset in YOUR_SETTINGS {
            command.env_remove(unset);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("bash runs");
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "exec 2>&1").unwrap();
        let output = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            output,
        }
    }

    /// Runs `command`; what it printed, once it succeeded.
    fn run(&mut self, command: &str) -> String {
        const END: &str = "::end of command::";
        writeln!(
            self.stdin,
            "{command}\nstatus=$?; echo; echo \"{END} $status\""
        )
        .unwrap();
        let mut printed = String::new();
        for line in self.output.by_ref() {
            let line = line.unwrap();
            if let Some(status) = line.strip_prefix(END) {
                assert_eq!(status.trim(), "0", "`{command}` failed:\n{printed}");
                return printed;
            }
            printed.push_str(&line);
            printed.push('\n');
        }
        panic!("the shell ended during `{command}`:\n{printed}");
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn getting_started_runs_as_the_page_shows() {
    let page = std::fs::read_to_string(repo_root().join("docs/src/getting-started.md")).unwrap();
    let mut instructions = instructions(&page).into_iter();
    assert!(
        TcpListener::bind(("127.0.0.1", 8080)).is_ok(),
        "port 8080 is in use: the page's service serves there"
    );

    // Beside a clone named as the page names it, with the pinned cargo-generate on PATH (the page
    // installs the same program from the same lockfile).
    let folder = work_dir().join("interactive").join("getting-started");
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).unwrap();
    std::os::unix::fs::symlink(repo_root(), folder.join("actix-api-auth")).unwrap();
    let Some(Instruction::Run(generate)) = instructions.next() else {
        panic!("the page starts with `cargo generate`")
    };
    assert!(
        generate.command.starts_with("cargo generate "),
        "{generate:?}"
    );
    let path = format!(
        "PATH={}:\"$PATH\" {}",
        cargo_generate().parent().unwrap().display(),
        generate.command
    );
    let terminal = Terminal::start("cg-started", &folder, &path);
    // Enter at every question keeps its default.
    for question in [
        "Which sub-template should be expanded?",
        KEY_PREFIX,
        ROUTE_PREFIX,
        DOCS_PATH,
        DATABASE,
        REDIS_CACHE,
    ] {
        terminal.wait_for(question);
        terminal.keys(&["Enter"]);
    }
    let screen = terminal.wait_for("EXIT=");
    let (screen, exit) = screen.split_once("EXIT=").unwrap();
    assert!(exit.starts_with('0'), "{screen}");
    assert!(
        shows(&generate.shown, screen),
        "the page shows\n{}\nbut the terminal showed\n{screen}",
        generate.shown.join("\n")
    );
    drop(terminal);

    let project = folder.join("my-service");
    let mut shell = Shell::start(&folder);
    let mut service: Option<Service> = None;
    for instruction in instructions {
        match instruction {
            // In a second terminal, as the page says: built first, so that waiting for the port
            // does not wait for the compiler.
            Instruction::Run(step) if step.command == "cargo run" => {
                if let Some(running) = service.take() {
                    assert!(running.stop().success());
                }
                {
                    let _lock = build_lock();
                    let built = cargo_command(&project).arg("build").output().unwrap();
                    assert!(
                        built.status.success(),
                        "{}",
                        String::from_utf8_lossy(&built.stderr)
                    );
                }
                let mut run = cargo_command(&project);
                run.arg("run");
                for unset in YOUR_SETTINGS {
                    run.env_remove(unset);
                }
                run.stdout(Stdio::null()).stderr(Stdio::null());
                service = Some(Service::adopt(run.spawn().unwrap(), 8080));
            }
            Instruction::Run(step) => {
                let printed = shell.run(&step.command);
                assert!(
                    shows(&step.shown, &printed),
                    "`{}`: the page shows\n{}\nbut it printed\n{printed}",
                    step.command,
                    step.shown.join("\n")
                );
            }
            // The handler goes at the end of src/routes.rs; `routes()` replaces the one there.
            Instruction::Code(code) => {
                let routes = project.join("src/routes.rs");
                let source = std::fs::read_to_string(&routes).unwrap();
                let source = match code.strip_prefix("pub fn routes(") {
                    Some(_) => {
                        let start = source.find("pub fn routes(").expect("routes() is there");
                        let end = start + source[start..].find("\n}\n").unwrap() + 3;
                        format!("{}{code}{}", &source[..start], &source[end..])
                    }
                    None => format!("{source}\n{code}"),
                };
                std::fs::write(&routes, source).unwrap();
            }
        }
    }
    let service = service.expect("the page starts the service");
    assert!(service.stop().success());
}
