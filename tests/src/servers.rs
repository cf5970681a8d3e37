//! Throwaway PostgreSQL, Redis and nginx servers on loopback, in temporary folders, stopped when
//! dropped.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the cluster is created and
//! started as the `postgres` user.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::free_port;
use crate::tools::{self, is_root};

fn run(description: &str, command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{description}: {e}"));
    assert!(
        output.status.success(),
        "{description} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A folder every user (`postgres` included) can traverse, removed on drop.
fn scratch_dir(name: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(name).tempdir().unwrap();
    run("chmod", Command::new("chmod").arg("755").arg(dir.path()));
    dir
}

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Postgres {
    /// Creates and starts a PostgreSQL cluster with trust authentication on 127.0.0.1.
    pub fn start() -> Self {
        let bin = pg_bindir();
        let dir = scratch_dir("pg-");
        let data = dir.path().join("data");
        let socket = dir.path().join("socket");
        let port = free_port();
        if is_root() {
            for (path, mode) in [(&data, "700"), (&socket, "755")] {
                run(
                    "install",
                    Command::new("install")
                        .args(["-d", "-o", "postgres", "-g", "postgres", "-m", mode])
                        .arg(path),
                );
            }
        } else {
            std::fs::create_dir_all(&socket).unwrap();
        }
        let initdb = format!(
            "{} -D {} -U postgres --auth=trust -E UTF8 --no-locale",
            bin.join("initdb").display(),
            data.display()
        );
        run("initdb", &mut as_postgres(&initdb));
        let postgres = Self { dir, bin, port };
        postgres.restart();
        postgres
    }

    /// Stops the server, keeping its data, as an outage would.
    pub fn stop(&self) {
        run(
            "pg_ctl stop",
            &mut as_postgres(&self.pg_ctl("-m fast -w stop")),
        );
    }

    /// Starts the server (again, after [`Postgres::stop`]) on its port.
    pub fn restart(&self) {
        let socket = self.dir.path().join("socket");
        let options = format!(
            "-l {} -o '-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off' -w start",
            socket.join("server.log").display(),
            self.port,
            socket.display()
        );
        run("pg_ctl start", &mut as_postgres(&self.pg_ctl(&options)));
    }

    fn pg_ctl(&self, args: &str) -> String {
        format!(
            "{} -D {} {args}",
            self.bin.join("pg_ctl").display(),
            self.dir.path().join("data").display()
        )
    }

    /// Creates a database and returns its URL.
    pub fn database(&self, name: &str) -> String {
        run(
            "createdb",
            Command::new(self.bin.join("createdb")).args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                name,
            ]),
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs `query` in `database` with psql and returns what it printed.
    pub fn sql(&self, database: &str, query: &str) -> String {
        let port = self.port.to_string();
        let args = [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            database,
            "-Atc",
            query,
        ];
        let output = Command::new(self.bin.join("psql"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "psql {query}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.pg_ctl("-m fast -w stop"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn as_postgres(command: &str) -> Command {
    if is_root() {
        let mut su = Command::new("su");
        su.args(["postgres", "-c", command]);
        su
    } else {
        let mut sh = Command::new("sh");
        sh.args(["-c", command]);
        sh
    }
}

fn pg_bindir() -> PathBuf {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|dir| dir.join("initdb").exists()) {
        return dir;
    }
    let fallback = PathBuf::from("/usr/lib/postgresql/15/bin");
    assert!(
        fallback.join("initdb").exists(),
        "PostgreSQL 15's server programs are missing: apt-get install postgresql-15"
    );
    fallback
}

pub struct Redis {
    dir: tempfile::TempDir,
    port: u16,
    /// TLS only, with a password: see [`Redis::start_tls`].
    password: Option<String>,
}

impl Redis {
    /// Starts a Redis server on 127.0.0.1 with persistence off.
    pub fn start() -> Self {
        let redis = Self {
            dir: scratch_dir("redis-"),
            port: free_port(),
            password: None,
        };
        redis.restart();
        redis
    }

    /// Starts a Redis server that speaks TLS only, with a certificate for `localhost` signed by a
    /// CA of its own ([`Redis::ca_file`]), and asks for `password`.
    pub fn start_tls(password: &str) -> Self {
        let redis = Self {
            dir: scratch_dir("redis-tls-"),
            port: free_port(),
            password: Some(password.to_owned()),
        };
        let dir = redis.dir.path();
        let openssl = tools::require("openssl");
        let openssl = |args: &[&str]| {
            run(
                "openssl",
                Command::new(&openssl).args(args).current_dir(dir),
            );
        };
        let new_key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509", "-subj", "/CN=test CA", "-days", "1"],
                &new_key[..],
                &["-keyout", "ca.key", "-out", "ca.pem"],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req", "-subj", "/CN=localhost"],
                &new_key[..],
                &["-keyout", "server.key", "-out", "server.csr"],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join("san.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.cnf",
        ]);
        redis.restart();
        redis
    }

    /// The CA that signed a TLS server's certificate, for clients to trust (`SSL_CERT_FILE`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Stops the server, as an outage would.
    pub fn stop(&self) {
        self.cli(&["shutdown", "nosave"]);
    }

    /// Stops the server after writing its data to disk, which [`Redis::restart`] then loads: an
    /// outage after which the old entries are back.
    pub fn stop_keeping_data(&self) {
        self.cli(&["shutdown", "save"]);
    }

    /// Starts the server (again) on its port, empty unless it stopped keeping its data.
    pub fn restart(&self) {
        let (dir, port) = (self.dir.path(), self.port.to_string());
        let mut server = Command::new(tools::require("redis-server"));
        server
            .args(["--bind", "127.0.0.1", "--daemonize", "yes"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"));
        match &self.password {
            None => server.args(["--port", &port]),
            Some(password) => server
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .args([
                    "--tls-cert-file",
                    "server.pem",
                    "--tls-key-file",
                    "server.key",
                ])
                .args(["--tls-ca-cert-file", "ca.pem", "--requirepass", password]),
        };
        run("redis-server", &mut server);
        for _ in 0..100 {
            if self.cli(&["ping"]).starts_with("PONG") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("redis-server did not answer on port {port}");
    }

    pub fn url(&self) -> String {
        match &self.password {
            None => format!("redis://127.0.0.1:{}/", self.port),
            Some(password) => format!("rediss://:{password}@localhost:{}/", self.port),
        }
    }

    /// Runs a `redis-cli` command against this server and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cli = Command::new(tools::require("redis-cli"));
        cli.args(["-p", &self.port.to_string()]);
        if let Some(password) = &self.password {
            cli.args(["--tls", "--cacert"])
                .arg(self.ca_file())
                .env("REDISCLI_AUTH", password);
        }
        cli.args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Debian's nginx with the `http` block `http` (everything but its temporary paths), listening where
/// that block says; stopped on drop.
pub struct Nginx {
    dir: tempfile::TempDir,
    child: std::process::Child,
}

impl Nginx {
    /// Starts nginx and waits until `port`, one it listens on, takes connections.
    pub fn start(http: &str, port: u16) -> Self {
        let dir = scratch_dir("nginx");
        let root = dir.path().display().to_string();
        let config = format!(
            "daemon off;\nmaster_process off;\npid {root}/nginx.pid;\nerror_log {root}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             access_log off;\n\
             client_body_temp_path {root}/body;\nproxy_temp_path {root}/proxy;\n\
             fastcgi_temp_path {root}/fastcgi;\nuwsgi_temp_path {root}/uwsgi;\nscgi_temp_path {root}/scgi;\n\
             {http}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
        let nginx = tools::require("nginx");
        run(
            "nginx -t",
            Command::new(&nginx)
                .args(["-t", "-q", "-p"])
                .arg(dir.path())
                .arg("-c")
                .arg(dir.path().join("nginx.conf")),
        );
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        // Held from here on, so that a failure below stops nginx on the way out (`Drop`).
        let started = Self { dir, child };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return started;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("nginx did not listen on port {port}: {}", started.errors());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What nginx logged: its errors and warnings.
    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
