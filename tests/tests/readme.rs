//! The root README's two commands, as a newcomer runs them. Both are read from the README, so an edit
//! that breaks them fails here: the demo command is run as written (its admin key must work, and a
//! SIGTERM must stop it and free its port), and the test command is the one `.ci/run` runs.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use actix_api_auth_tests::{repo_root, Client};

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
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {demo}"))
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sh runs");

    // What the demo prints, line by line; a closed stdout ends the channel.
    let (lines, printed) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("demo: {line}");
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let key = loop {
        match printed.recv_timeout(Duration::from_secs(900)) {
            Ok(line) => {
                if let Some(key) = line.strip_prefix("Admin key (shown once): ") {
                    break key.to_owned();
                }
            }
            Err(err) => panic!("the demo printed no admin key ({err})"),
        }
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", DEMO_PORT)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "the demo exited");
        assert!(Instant::now() < deadline, "the demo never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
    let client = Client::new(&format!("http://127.0.0.1:{DEMO_PORT}"));
    let (status, body) = client.send("GET", "/api/v1/api-keys", Some(&key), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total"], 1, "{body}");

    // The process started for the README's command is the one that gets the signal.
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the demo ended with {status}");
    assert!(
        TcpListener::bind(("127.0.0.1", DEMO_PORT)).is_ok(),
        "port {DEMO_PORT} is still taken after the demo stopped: something it started outlived it"
    );
}
