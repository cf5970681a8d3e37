//! Shared helpers of the template's tests: generate a project with the pinned `cargo generate`, run
//! cargo in it on one shared target directory, and run the generated service.

pub mod servers;
pub mod tools;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clap::Parser;

/// The repository root: the template to generate from.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Where generated projects and their shared target directory live.
pub fn work_dir() -> PathBuf {
    let dir = std::env::var_os("TEMPLATE_TESTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join("template-tests")
        });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One target directory for every generated project, so dependencies are built once.
pub fn shared_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|dir| !dir.starts_with(Path::new(env!("CARGO_MANIFEST_DIR"))))
        .unwrap_or_else(|| work_dir().join("target"))
}

/// Heavy cargo builds run one at a time: the machine has two cores.
pub fn build_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs the pinned `cargo-generate` binary; returns its output, successful or not.
pub fn cargo_generate(args: &[&str]) -> Output {
    // Integration tests run from target/<profile>/deps; cargo builds the binary beside that folder.
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("cargo-generate");
    Command::new(binary)
        .arg("generate")
        .args(args)
        .env(
            "USER",
            std::env::var("USER").unwrap_or_else(|_| "template-tests".into()),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("cargo-generate runs")
}

/// The arguments of `cargo generate` (after `generate`) that render this template silently as `name`
/// into `destination`, with `defines` (`key=value`).
pub fn generate_args(destination: &Path, name: &str, defines: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--path".into(),
        repo_root().to_str().unwrap().into(),
        "--name".into(),
        name.into(),
        "--destination".into(),
        destination.to_str().unwrap().into(),
        "--vcs".into(),
        "none".into(),
        "--silent".into(),
    ];
    for define in defines {
        args.extend(["-d".into(), (*define).into()]);
    }
    args
}

/// Renders the template as `name` into `destination` within this process: for the harness's own
/// binaries, which have no `cargo-generate` binary beside them. Returns the project's path. Call it
/// before starting any thread: it may set `USER` in the process's environment.
pub fn generate_in_process(
    destination: &Path,
    name: &str,
    defines: &[&str],
) -> Result<PathBuf, String> {
    if std::env::var_os("USER").is_none() {
        // cargo-generate needs a user name for the `authors` placeholder.
        // SAFETY: only the harness's binaries call this, from `main` before they start any thread,
        // so nothing reads the environment meanwhile; the tests, which run on threads, use the
        // `cargo-generate` binary instead and pass USER to it with `Command::env`.
        unsafe { std::env::set_var("USER", "template-tests") };
    }
    std::fs::create_dir_all(destination).map_err(|err| err.to_string())?;
    let mut argv = vec!["cargo-generate".to_owned(), "generate".to_owned()];
    argv.extend(generate_args(destination, name, defines));
    let cargo_generate::Cli::Generate(args) = cargo_generate::Cli::parse_from(argv);
    cargo_generate::generate(args).map_err(|err| format!("cargo generate: {err}"))
}

/// Runs `cargo generate --silent` for `name` with `defines` (`key=value`) into `destination`.
pub fn generate_into(destination: &Path, name: &str, defines: &[&str]) -> Output {
    std::fs::create_dir_all(destination).unwrap();
    let args = generate_args(destination, name, defines);
    cargo_generate(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Generates `name` from the template with `defines` (`key=value`) into a fresh folder; returns its path.
pub fn generate(name: &str, defines: &[&str]) -> PathBuf {
    let destination = work_dir().join("generated");
    let project = destination.join(name);
    if project.exists() {
        std::fs::remove_dir_all(&project).unwrap();
    }
    let output = generate_into(&destination, name, defines);
    assert!(
        output.status.success(),
        "cargo generate {name} {defines:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    project
}

/// `cargo`, to run in `project` on the shared target directory.
pub fn cargo_command(project: &Path) -> Command {
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(project)
        .env("CARGO_TARGET_DIR", shared_target_dir())
        .env_remove("RUSTFLAGS")
        // Without debug info and incremental state a full run writes ~3 GB instead of
        // ~18 GB; CI machines share their disk and have run out (No space left on device).
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .env("CARGO_INCREMENTAL", "0");
    command
}

/// Runs `cargo <args>` in `project` on the shared target directory and asserts it succeeds.
pub fn cargo(project: &Path, args: &[&str]) -> String {
    cargo_with_env(project, args, &[])
}

/// [`cargo`] with extra environment variables.
pub fn cargo_with_env(project: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let _lock = build_lock();
    let output = cargo_command(project)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("cargo runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "cargo {args:?} failed in {}:\n{text}",
        project.display()
    );
    text
}

/// The debug binary of a generated project, built on the shared target directory.
pub fn binary(project: &Path, name: &str) -> PathBuf {
    cargo(project, &["build", "--locked", "--bin", name]);
    shared_target_dir().join("debug").join(name)
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A generated service running in the background; stopped with SIGTERM when dropped.
pub struct Service {
    child: Child,
    pub base_url: String,
}

impl Service {
    pub fn start(binary: &Path, env: &[(&str, &str)], port: u16) -> Self {
        let mut command = Command::new(binary);
        command.arg("serve");
        Self::spawn(command, env, port)
    }

    /// Starts `command`, which runs the service, and waits until it listens on `port`.
    pub fn spawn(command: Command, env: &[(&str, &str)], port: u16) -> Self {
        Self::spawn_with_output(command, env, port, Stdio::null(), Stdio::inherit())
    }

    /// [`Service::start`], with everything the service prints (logs included) appended to `log`.
    pub fn start_logged(binary: &Path, env: &[(&str, &str)], port: u16, log: &Path) -> Self {
        let mut command = Command::new(binary);
        command.arg("serve");
        let file = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .expect("the log file opens")
        };
        Self::spawn_with_output(command, env, port, file().into(), file().into())
    }

    fn spawn_with_output(
        mut command: Command,
        env: &[(&str, &str)],
        port: u16,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Self {
        let child = command
            .envs(env.iter().copied())
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("the service starts");
        Self::adopt(child, port)
    }

    /// Takes charge of `child`, a process that serves on `port`, once it listens there.
    pub fn adopt(mut child: Child, port: u16) -> Self {
        let base_url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the service exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the service did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, base_url }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL, as a crash would, and waits for the process to end.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for a graceful exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill has no memory preconditions; the pid is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
    }
}

/// A small HTTP client for a running service: every answer, success or not, as status and JSON.
pub struct Client {
    agent: ureq::Agent,
    base: String,
}

impl Client {
    pub fn new(base_url: &str) -> Self {
        Self {
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into(),
            base: base_url.to_owned(),
        }
    }

    /// `GET path`, answered as text (for `/metrics`).
    pub fn text(&self, path: &str) -> String {
        self.agent
            .get(format!("{}{path}", self.base))
            .call()
            .expect("the service answers")
            .body_mut()
            .read_to_string()
            .unwrap_or_default()
    }

    /// `method path` with an optional `X-API-Key`: the status, or `None` once the service is gone.
    pub fn try_send(&self, method: &str, path: &str, key: Option<&str>) -> Option<u16> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        let mut response = self.agent.run(request.body(()).ok()?).ok()?;
        // Read the body, so a cut-off answer counts as no answer.
        response.body_mut().read_to_string().ok()?;
        Some(response.status().as_u16())
    }

    /// Sends a request with an optional `X-API-Key` and JSON body.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("X-API-Key", key);
        }
        let response = match body {
            Some(body) => self.agent.run(
                request
                    .header("Content-Type", "application/json")
                    .body(body.to_string())
                    .unwrap(),
            ),
            None => self.agent.run(request.body(()).unwrap()),
        };
        let mut response = response.expect("the service answers");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }
}

/// Mints an admin key with the service's own CLI and returns it.
pub fn mint_admin_key(binary: &Path, env: &[(&str, &str)]) -> String {
    let output = Command::new(binary)
        .args(["keys", "create", "--name", "bootstrap", "--admin"])
        .envs(env.iter().copied())
        .output()
        .expect("the CLI runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}
