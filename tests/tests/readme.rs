//! The root README's two commands, as a newcomer runs them. Both are read from the README, so an edit
//! that breaks them fails here: the demo command is run as written (its admin key must work, and a
//! SIGTERM must stop it and free its port), and the test command is the one `.ci/run` runs.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use actix_api_auth_tests::{Client, Service, repo_root, work_dir};

const DEMO_PORT: u16 = 8080;

/// The commands of the README's "Two commands" block, in order: the demo, then the tests.
fn two_commands() -> (String, String) {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("## Two commands")
        .nth(1)
        .expect("the README has a \"Two commands\" section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section has a sh block");
    let commands: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    assert_eq!(commands.len(), 2, "{commands:?}");
    (commands[0].to_owned(), commands[1].to_owned())
}

#[test]
fn ci_runs_the_readme_test_command() {
    let (_, test) = two_commands();
    assert!(test.starts_with("cargo test "), "{test}");
    let ci = std::fs::read_to_string(repo_root().join(".ci").join("run")).unwrap();
    assert!(
        ci.lines().any(|line| line.trim() == test),
        ".ci/run does not run the README's test command `{test}`"
    );
}

#[test]
fn the_demo_serves_a_working_admin_key_and_stops_on_sigterm() {
    let (demo, _) = two_commands();
    assert!(
        TcpListener::bind(("127.0.0.1", DEMO_PORT)).is_ok(),
        "port {DEMO_PORT} is in use: the demo serves there"
    );
    // cargo's progress and the service's logs, read when something fails.
    let log = work_dir().join("demo.log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {demo}"))
        .current_dir(repo_root())
        // As a newcomer's shell has them: none of the service's settings.
        .env_remove("PORT")
        .env_remove("HOST")
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("sh runs");
    let stdout = child.stdout.take().unwrap();
    let lines = BufReader::new(stdout).lines().map_while(Result::ok);

    // What the demo prints, line by line, until the key; the reader thread keeps the pipe drained.
    let (keys, printed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines {
            if let Some(key) = line.strip_prefix("Admin key (shown once): ") {
                let _ = keys.send(key.to_owned());
            }
        }
    });
    let key = printed
        .recv_timeout(Duration::from_secs(900))
        .unwrap_or_else(|err| {
            let _ = child.kill();
            panic!(
                "the demo printed no admin key ({err}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
    // From here on, a failing assertion still stops the demo: the Service does when dropped.
    let demo = Service::adopt(child, DEMO_PORT);
    let client = Client::new(&demo.base_url);
    let (status, body) = client.send("GET", "/api/v1/api-keys", Some(&key), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 1, "{body}");

    // The process started for the README's command is the one that gets the SIGTERM.
    let status = demo.stop();
    assert!(status.success(), "the demo ended with {status}");
    assert!(
        TcpListener::bind(("127.0.0.1", DEMO_PORT)).is_ok(),
        "port {DEMO_PORT} is still taken after the demo stopped: something it started outlived it"
    );
}
