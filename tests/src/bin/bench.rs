//! The authentication benchmark. Generates a service from this template, builds it in release mode,
//! runs it on each backend (PostgreSQL and Redis on loopback, started as the tests start them) and
//! drives it with wrk: the open route, one warm key, many distinct keys, garbage keys, the first use
//! of fresh keys, and the in-process cache turned off. Throughput and latency are reported as ratios
//! to the open route measured in the same round; store round trips per request are counted by the
//! service itself (its `/metrics`). Nothing here asserts on timings: the table is the result.
//!
//! `cargo run --locked --manifest-path tests/Cargo.toml --bin bench` (add `-- --help` for options)

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use actix_api_auth_tests::servers::{Postgres, Redis};
use actix_api_auth_tests::{
    Client, Service, cargo, cargo_command, free_port, generate_in_process, repo_root,
    shared_target_dir, tools, work_dir,
};
use clap::{Parser, ValueEnum};
use serde_json::json;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const NAME: &str = "bench-svc";
const KEYS: &str = "/api/v1/api-keys";
const WRK_SCRIPT: &str = include_str!("../../bench/wrk-rotate.lua");
/// The service runs on one core and wrk on the other, so neither preempts the other.
const SERVICE_CORE: &str = "0";
const LOAD_CORE: &str = "1";
/// Requests sent with one key to check that `request_count` is exact after the flush.
const COUNTED: u64 = 500;

#[derive(Parser)]
#[command(about = "Benchmarks the authentication path of a service generated from this template")]
struct Args {
    /// Seconds per wrk run
    #[arg(long, default_value_t = 1)]
    seconds: u32,
    /// Rounds of every scenario, interleaved; the table shows medians. This machine's speed drifts
    /// by ±20% from one second to the next, so many short rounds beat a few long ones.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Open connections of wrk (32, as litestar-api-auth was measured)
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Distinct keys in the many-keys scenario
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Fresh keys used once each, for the cold path
    #[arg(long, default_value_t = 200)]
    cold: usize,
    /// Backends to run, comma-separated
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "memory,sqlite,postgres,postgres+redis"
    )]
    backends: Vec<Backend>,
    /// A short run (two rounds, fewer keys): the smoke test CI runs
    #[arg(long)]
    quick: bool,
    /// Also time a cold debug build of a generated project and its rebuild after editing a handler
    #[arg(long)]
    build_times: bool,
    /// Print every run as it finishes
    #[arg(long, short)]
    verbose: bool,
    /// Where to write the table [default: tests/target/bench/results.md]
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    Memory,
    Sqlite,
    Postgres,
    #[value(name = "postgres+redis")]
    PostgresRedis,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
            Self::PostgresRedis => "postgres+redis",
        }
    }

    fn persistent(self) -> bool {
        self != Self::Memory
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Open,
    Warm,
    Many,
    Garbage,
    CacheOff,
}

impl Scenario {
    fn label(self, keys: usize) -> String {
        match self {
            Self::Open => "open route `/health`".into(),
            Self::Warm => "warm key, `/protected`".into(),
            Self::Many => format!("{keys} keys in turn, `/protected`"),
            Self::Garbage => "garbage keys, `/protected` (401)".into(),
            Self::CacheOff => "warm key, in-process cache off".into(),
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Open => "/health",
            _ => "/protected",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Self::Open => "open.txt",
            Self::Warm | Self::CacheOff => "warm.txt",
            Self::Many => "many.txt",
            Self::Garbage => "garbage.txt",
        }
    }
}

/// One wrk run, with the store round trips the service counted during it.
#[derive(Clone, Copy, Default)]
struct Load {
    requests: u64,
    non_2xx: u64,
    socket_errors: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    store_lookups: f64,
    redis_lookups: f64,
}

impl Load {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

/// One scenario over the rounds: medians, and its ratios to the open route (see [`row`]).
struct Row {
    scenario: Scenario,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    rps_ratio: f64,
    p99_ratio: f64,
    lookups_per_request: f64,
    redis_per_request: f64,
    non_2xx: u64,
    socket_errors: u64,
}

struct BackendReport {
    backend: Backend,
    rows: Vec<Row>,
    cold: Cold,
    usage: UsageWrites,
    rss_idle_kb: u64,
    rss_peak_kb: u64,
}

struct Cold {
    keys: usize,
    p50_us: f64,
    p99_us: f64,
    warm_p50_us: f64,
    lookups_per_key: f64,
    redis_per_key: f64,
}

struct UsageWrites {
    writes: f64,
    flushed_keys: f64,
    seconds: f64,
    flush_interval: u64,
    /// `request_count` read back after a restart, for `COUNTED` requests; `None` for the memory store.
    counted: Option<u64>,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.quick {
        args.seconds = 1;
        args.rounds = 2;
        args.keys = args.keys.min(100);
        args.cold = args.cold.min(20);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    tools::require("wrk");
    let dir = work_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("wrk-rotate.lua"), WRK_SCRIPT)?;

    eprintln!("bench: generating {NAME} and building it in release mode...");
    let project = generate(&dir, NAME, &["database=postgres", "redis_cache=true"])?;
    let started = Instant::now();
    cargo(
        &project,
        &["build", "--release", "--locked", "--features", "sqlite"],
    );
    eprintln!("bench: built in {:.0?}", started.elapsed());
    let binary = shared_target_dir().join("release").join(NAME);

    let needs = |b: Backend| args.backends.contains(&b);
    let postgres =
        (needs(Backend::Postgres) || needs(Backend::PostgresRedis)).then(Postgres::start);
    let redis = needs(Backend::PostgresRedis).then(Redis::start);

    let mut reports = Vec::new();
    for (i, &backend) in args.backends.iter().enumerate() {
        eprintln!("bench: {}...", backend.label());
        let database_url = match backend {
            Backend::Memory => "memory://".to_owned(),
            Backend::Sqlite => format!("sqlite://{}", dir.join("bench.db").display()),
            Backend::Postgres | Backend::PostgresRedis => postgres
                .as_ref()
                .expect("started above")
                .database(&format!("bench_{i}")),
        };
        if backend == Backend::Sqlite {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(dir.join(format!("bench.db{suffix}")));
            }
        }
        // The failure limits would turn the garbage scenario into 429s after a few hundred requests
        // from wrk's one address; the benchmark measures the rejection itself. RUST_LOG=warn keeps
        // the audit line of each failed attempt out of the measurement.
        let mut env = vec![
            ("DATABASE_URL".to_owned(), database_url),
            ("RUST_LOG".to_owned(), "warn".to_owned()),
            ("AUTH_FAILURES_PER_MINUTE".to_owned(), "0".to_owned()),
            (
                "AUTH_FAILURES_PER_KEY_PER_MINUTE".to_owned(),
                "0".to_owned(),
            ),
        ];
        if backend == Backend::PostgresRedis {
            let url = redis.as_ref().expect("started above").url();
            env.push(("REDIS_URL".to_owned(), url));
        }
        reports.push(bench_backend(backend, &binary, &dir, &env, args)?);
    }
    drop((postgres, redis));

    let build_times = if args.build_times {
        Some(build_times(&dir)?)
    } else {
        None
    };
    let table = render(args, &reports, build_times.as_deref());
    print!("{table}");
    let out = args.out.clone().unwrap_or_else(|| dir.join("results.md"));
    std::fs::write(&out, &table)?;
    eprintln!("bench: table written to {}", out.display());
    Ok(())
}

fn generate(dir: &Path, name: &str, defines: &[&str]) -> Result<PathBuf> {
    let project = dir.join(name);
    if project.exists() {
        std::fs::remove_dir_all(&project)?;
    }
    Ok(generate_in_process(dir, name, defines)?)
}

/// Starts the service, mints its admin key and a warm key; returns them once the key has been used.
fn start(
    binary: &Path,
    dir: &Path,
    env: &[(String, String)],
    extra: &[(&str, &str)],
) -> Result<(Service, Client, String, String)> {
    let admin_file = dir.join(format!("admin-{}.key", free_port()));
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    // One core for the service (so one actix worker), the other for wrk.
    let mut command = Command::new("taskset");
    command
        .args(["-c", SERVICE_CORE])
        .arg(binary)
        .args(["serve", "--admin-key-file"])
        .arg(&admin_file);
    let service = Service::spawn(command, &all, free_port());
    let deadline = Instant::now() + Duration::from_secs(10);
    let admin = loop {
        match std::fs::read_to_string(&admin_file) {
            Ok(text) if text.ends_with('\n') => break text.trim().to_owned(),
            _ if Instant::now() > deadline => {
                return Err("the admin key file never appeared".into());
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    std::fs::remove_file(&admin_file)?;
    let client = Client::new(&service.base_url);
    let (warm, _) = create_key(&client, &admin, "warm")?;
    let (status, _) = client.send("GET", "/protected", Some(&warm), None);
    if status != 200 {
        return Err(format!("a fresh key was answered {status}").into());
    }
    Ok((service, client, admin, warm))
}

/// Creates a key over HTTP; returns the key and its id.
fn create_key(client: &Client, admin: &str, name: &str) -> Result<(String, String)> {
    let (status, body) = client.send("POST", KEYS, Some(admin), Some(json!({ "name": name })));
    match (status, body["key"].as_str(), body["id"].as_str()) {
        (201, Some(key), Some(id)) => Ok((key.to_owned(), id.to_owned())),
        _ => Err(format!("creating a key answered {status}: {body}").into()),
    }
}

fn bench_backend(
    backend: Backend,
    binary: &Path,
    dir: &Path,
    env: &[(String, String)],
    args: &Args,
) -> Result<BackendReport> {
    let (service, client, admin, warm) = start(binary, dir, env, &[])?;
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle_kb = proc_status_kb(service.pid(), "VmRSS")?;

    let many = (0..args.keys)
        .map(|i| create_key(&client, &admin, &format!("many-{i}")).map(|(key, _)| key))
        .collect::<Result<Vec<_>>>()?;
    let cold = (0..args.cold)
        .map(|i| create_key(&client, &admin, &format!("cold-{i}")).map(|(key, _)| key))
        .collect::<Result<Vec<_>>>()?;
    let (counted_key, counted_id) = create_key(&client, &admin, "counted")?;
    std::fs::write(dir.join("open.txt"), "-\n")?;
    std::fs::write(dir.join("warm.txt"), format!("{warm}\n"))?;
    std::fs::write(dir.join("many.txt"), many.join("\n") + "\n")?;
    std::fs::write(dir.join("garbage.txt"), garbage(&warm).join("\n") + "\n")?;

    let flushes_before = scrape(&client);
    let phase = Instant::now();
    wrk(&service, &client, dir, Scenario::Warm, 1, args.connections)?;
    let rounds = run_rounds(
        &service,
        &client,
        dir,
        &[
            Scenario::Open,
            Scenario::Warm,
            Scenario::Many,
            Scenario::Garbage,
        ],
        args,
    )?;
    let cold = cold_path(&client, &cold)?;
    for _ in 0..COUNTED {
        let (status, _) = client.send("GET", "/protected", Some(&counted_key), None);
        if status != 200 {
            return Err(format!("a counted request was answered {status}").into());
        }
    }
    let flushes_after = scrape(&client);
    let seconds = phase.elapsed().as_secs_f64();
    let rss_peak_kb = proc_status_kb(service.pid(), "VmHWM")?;
    let status = service.stop();
    if !status.success() {
        return Err(format!("the service exited with {status} on SIGTERM").into());
    }

    // The same store again, without the in-process cache: the warm key now costs a lookup each time.
    let (service, client, admin, warm) = start(binary, dir, env, &[("KEY_CACHE_TTL_MS", "0")])?;
    let counted = if backend.persistent() {
        let (status, body) =
            client.send("GET", &format!("{KEYS}/{counted_id}"), Some(&admin), None);
        if status != 200 {
            return Err(format!("reading the counted key answered {status}").into());
        }
        body["request_count"].as_u64()
    } else {
        None
    };
    std::fs::write(dir.join("warm.txt"), format!("{warm}\n"))?;
    // Each cache-off run is paired with an open-route run on the same process.
    let off_rounds = run_rounds(
        &service,
        &client,
        dir,
        &[Scenario::Open, Scenario::CacheOff],
        args,
    )?;
    drop(service);

    let mut rows: Vec<Row> = [
        Scenario::Open,
        Scenario::Warm,
        Scenario::Many,
        Scenario::Garbage,
    ]
    .into_iter()
    .map(|scenario| row(&rounds, scenario))
    .collect();
    rows.push(row(&off_rounds, Scenario::CacheOff));
    let delta = |name: &str| sum(&flushes_after, name) - sum(&flushes_before, name);
    Ok(BackendReport {
        backend,
        rows,
        cold,
        usage: UsageWrites {
            writes: delta("storage_operations_total{operation=\"record_usage\"}"),
            flushed_keys: delta("usage_flushed_keys_total"),
            seconds,
            flush_interval: 5,
            counted,
        },
        rss_idle_kb,
        rss_peak_kb,
    })
}

/// `args.rounds` rounds of `scenarios`, run in turn within each round.
fn run_rounds(
    service: &Service,
    client: &Client,
    dir: &Path,
    scenarios: &[Scenario],
    args: &Args,
) -> Result<Vec<Vec<(Scenario, Load)>>> {
    (0..args.rounds)
        .map(|round| {
            // Every other round runs backwards, so no scenario always follows another: a slow
            // drift of the machine or a periodic pause of the service does not favour one of them.
            let mut order = scenarios.to_vec();
            if round % 2 == 1 {
                order.reverse();
            }
            order
                .into_iter()
                .map(|scenario| {
                    let load = wrk(
                        service,
                        client,
                        dir,
                        scenario,
                        args.seconds,
                        args.connections,
                    )?;
                    if args.verbose {
                        eprintln!(
                            "bench:   round {round} {:?}: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs",
                            scenario,
                            load.rps(),
                            load.p50_us,
                            load.p99_us
                        );
                    }
                    Ok((scenario, load))
                })
                .collect()
        })
        .collect()
}

/// Keys that fail before any storage is touched: bad checksum, wrong prefix, wrong length, junk.
fn garbage(valid: &str) -> Vec<String> {
    let (body, last) = valid.split_at(valid.len() - 1);
    let other = if last == "0" { "1" } else { "0" };
    let mut keys = vec![
        format!("{body}{other}"),
        format!("xx_{}", &valid[3..]),
        valid[..valid.len() - 2].to_owned(),
        format!("{valid}AA"),
        "not-a-key".to_owned(),
        "a".repeat(200),
    ];
    // Vary the checksum failures so no two requests in a row carry the same bytes.
    for i in 0..58 {
        let mut key = valid.as_bytes().to_vec();
        let at = 3 + (i % (valid.len() - 9));
        key[at] = if key[at] == b'a' { b'b' } else { b'a' };
        keys.push(String::from_utf8(key).expect("ASCII"));
    }
    keys
}

fn wrk(
    service: &Service,
    client: &Client,
    dir: &Path,
    scenario: Scenario,
    seconds: u32,
    connections: u32,
) -> Result<Load> {
    let before = scrape(client);
    let output = Command::new("taskset")
        .args(["-c", LOAD_CORE, "wrk", "-t1"])
        .args([format!("-c{connections}"), format!("-d{seconds}s")])
        .arg("-s")
        .arg(dir.join("wrk-rotate.lua"))
        .arg(&service.base_url)
        .arg("--")
        .arg(scenario.path())
        .arg(dir.join(scenario.file()))
        .output()?;
    let after = scrape(client);
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .ok_or_else(|| {
            format!(
                "wrk printed no summary:\n{text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let field = |name: &str| -> Result<f64> {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| format!("wrk summary lacks {name}: {line}"))?
            .parse::<f64>()
            .map_err(|err| format!("wrk summary {name}: {err}").into())
    };
    let mut load = Load {
        requests: field("requests")? as u64,
        non_2xx: field("non2xx")? as u64,
        socket_errors: field("socket_errors")? as u64,
        seconds: field("duration_us")? / 1e6,
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        ..Load::default()
    };
    let delta = |name: &str| sum(&after, name) - sum(&before, name);
    load.store_lookups = delta("storage_operations_total{operation=\"lookup\"}");
    load.redis_lookups = delta("key_cache_lookups_total{cache=\"redis\"");
    Ok(load)
}

/// First uses of fresh keys, one at a time, then the same keys again (warm) for comparison.
fn cold_path(client: &Client, keys: &[String]) -> Result<Cold> {
    let before = scrape(client);
    let mut cold = time_each(client, keys)?;
    let after = scrape(client);
    let mut warm = time_each(client, keys)?;
    let delta = |name: &str| sum(&after, name) - sum(&before, name);
    let n = keys.len().max(1) as f64;
    Ok(Cold {
        keys: keys.len(),
        p50_us: percentile(&mut cold, 0.50),
        p99_us: percentile(&mut cold, 0.99),
        warm_p50_us: percentile(&mut warm, 0.50),
        lookups_per_key: delta("storage_operations_total{operation=\"lookup\"}") / n,
        redis_per_key: delta("key_cache_lookups_total{cache=\"redis\"") / n,
    })
}

fn time_each(client: &Client, keys: &[String]) -> Result<Vec<f64>> {
    keys.iter()
        .map(|key| {
            let started = Instant::now();
            let (status, _) = client.send("GET", "/protected", Some(key), None);
            let took = started.elapsed().as_secs_f64() * 1e6;
            if status == 200 {
                Ok(took)
            } else {
                Err(format!("a valid key was answered {status}").into())
            }
        })
        .collect()
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((values.len() - 1) as f64 * p).round() as usize;
    values[rank]
}

fn median(mut values: Vec<f64>) -> f64 {
    percentile(&mut values, 0.5)
}

/// Medians over the rounds.
///
/// Throughput drifts slowly with the machine, so its ratio is taken within each round, against the
/// open route of the same round, and the median of those ratios is reported. A p99 is set by short
/// pauses of the machine (a kernel thread taking the service's core for a few milliseconds) that
/// land in some runs and not others; a per-round ratio is spoilt when either of its two runs got
/// one, so the p99 ratio is the median p99 of the scenario over the median p99 of the open route.
fn row(rounds: &[Vec<(Scenario, Load)>], scenario: Scenario) -> Row {
    let mut loads = Vec::new();
    let mut opens = Vec::new();
    let mut rps_ratios = Vec::new();
    for round in rounds {
        let open = round
            .iter()
            .find(|(s, _)| *s == Scenario::Open)
            .map(|r| r.1);
        for &(s, load) in round {
            if s == scenario {
                let base = open.unwrap_or(load);
                loads.push(load);
                opens.push(base);
                rps_ratios.push(load.rps() / base.rps());
            }
        }
    }
    let requests: u64 = loads.iter().map(|l| l.requests).sum::<u64>().max(1);
    let p99_us = median(loads.iter().map(|l| l.p99_us).collect());
    Row {
        scenario,
        rps: median(loads.iter().map(Load::rps).collect()),
        p50_us: median(loads.iter().map(|l| l.p50_us).collect()),
        p99_us,
        rps_ratio: median(rps_ratios),
        p99_ratio: p99_us / median(opens.iter().map(|l| l.p99_us).collect()),
        lookups_per_request: loads.iter().map(|l| l.store_lookups).sum::<f64>() / requests as f64,
        redis_per_request: loads.iter().map(|l| l.redis_lookups).sum::<f64>() / requests as f64,
        non_2xx: loads.iter().map(|l| l.non_2xx).sum(),
        socket_errors: loads.iter().map(|l| l.socket_errors).sum(),
    }
}

/// The service's metrics.
fn scrape(client: &Client) -> String {
    client.text("/metrics")
}

/// The sum of every series whose name and labels start with `prefix`.
fn sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn proc_status_kb(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/status has no {field}").into())
}

/// Cold debug build of a fresh SQLite project on an empty target directory, then the rebuild after
/// editing one handler, and after editing the proc-macro crate.
fn build_times(dir: &Path) -> Result<String> {
    eprintln!("bench: timing builds (a cold debug build takes a minute or two)...");
    let project = generate(dir, "buildtime-svc", &[])?;
    let target = dir.join("buildtime-target");
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    let build = || -> Result<Duration> {
        let started = Instant::now();
        let status = cargo_command(&project)
            .args(["build", "--locked", "--quiet"])
            .env("CARGO_TARGET_DIR", &target)
            // What a user's build does, whatever the harness's builds turn off.
            .env_remove("CARGO_INCREMENTAL")
            .env_remove("CARGO_PROFILE_DEV_DEBUG")
            .status()?;
        if !status.success() {
            return Err("cargo build failed".into());
        }
        Ok(started.elapsed())
    };
    let cold = build()?;
    let routes = project.join("src").join("routes.rs");
    let text = std::fs::read_to_string(&routes)?;
    std::fs::write(
        &routes,
        text.replacen("\"authenticated\"", "\"authenticated!\"", 1),
    )?;
    let handler = build()?;
    let macros = project.join("macros").join("src").join("lib.rs");
    let text = std::fs::read_to_string(&macros)?;
    std::fs::write(&macros, text + "\n// edited by the benchmark\n")?;
    let proc_macro = build()?;
    std::fs::remove_dir_all(&target)?;
    Ok(format!(
        "| cold `cargo build` (debug, empty target dir, registry cached) | {:.1} s |\n\
         | rebuild after editing one handler (`src/routes.rs`) | {:.1} s |\n\
         | rebuild after editing the proc-macro crate | {:.1} s |\n",
        cold.as_secs_f64(),
        handler.as_secs_f64(),
        proc_macro.as_secs_f64()
    ))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let output = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .map(|o| {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                text.lines().next().unwrap_or_default().trim().to_owned()
            })
            .unwrap_or_default()
    };
    format!(
        "{cpu}, {} cores, Linux {}; {}; {}; template commit {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        output("uname", &["-r"]),
        output("rustc", &["--version"]),
        output("wrk", &["-v"])
            .split(" [")
            .next()
            .unwrap_or_default(),
        output(
            "git",
            &[
                "-C",
                repo_root().to_str().unwrap_or("."),
                "rev-parse",
                "--short",
                "HEAD"
            ]
        ),
    )
}

fn ms(us: f64) -> String {
    format!("{:.2} ms", us / 1000.0)
}

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn render(args: &Args, reports: &[BackendReport], build_times: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Authentication benchmark\n");
    let _ = writeln!(out, "Machine: {}.", machine());
    let _ = writeln!(
        out,
        "Release build. The service runs on core {SERVICE_CORE} (so one actix worker, as litestar-api-auth \
         ran one uvicorn worker) and wrk (`-t1 -c{}`, {} s per run) on core {LOAD_CORE}. Medians of {} \
         interleaved round(s), every other one in reverse order. Throughput ratios are taken per round \
         against the open route of the same round and process; the p99 ratio is the scenario's median \
         p99 over the open route's.\n",
        args.connections, args.seconds, args.rounds
    );
    let _ = writeln!(out, "## Summary\n");
    let _ = writeln!(
        out,
        "| backend | warm key × open (req/s) | warm key × open (p99) | garbage × open (req/s) | store lookups per first use | RSS idle / peak |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for report in reports {
        let find = |s: Scenario| {
            report
                .rows
                .iter()
                .find(|r| r.scenario == s)
                .expect("every row")
        };
        let _ = writeln!(
            out,
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} / {:.1} MB |",
            report.backend.label(),
            find(Scenario::Warm).rps_ratio,
            find(Scenario::Warm).p99_ratio,
            find(Scenario::Garbage).rps_ratio,
            report.cold.lookups_per_key,
            report.rss_idle_kb as f64 / 1024.0,
            report.rss_peak_kb as f64 / 1024.0,
        );
    }
    for report in reports {
        let _ = writeln!(out, "\n## {}\n", report.backend.label());
        let _ = writeln!(
            out,
            "| scenario | req/s | p50 | p99 | × open (req/s) | × open (p99) | store lookups / req | Redis lookups / req | non-2xx |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
        for row in &report.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {:.4} | {:.4} | {}{} |",
                row.scenario.label(args.keys),
                thousands(row.rps),
                ms(row.p50_us),
                ms(row.p99_us),
                row.rps_ratio,
                row.p99_ratio,
                row.lookups_per_request,
                row.redis_per_request,
                row.non_2xx,
                if row.socket_errors > 0 {
                    format!(" ({} socket errors)", row.socket_errors)
                } else {
                    String::new()
                },
            );
        }
        let c = &report.cold;
        let _ = writeln!(
            out,
            "\n- First use of {} fresh keys, one request at a time: p50 {}, p99 {} (the same keys warm: p50 {}); \
             {:.2} store lookups and {:.2} Redis lookups per first use.",
            c.keys,
            ms(c.p50_us),
            ms(c.p99_us),
            ms(c.warm_p50_us),
            c.lookups_per_key,
            c.redis_per_key
        );
        let u = &report.usage;
        let _ = writeln!(
            out,
            "- Usage writes: {:.0} batched writes in {:.0} s of load (flush every {} s), {:.1} keys per write; \
             `request_count` after {} requests and a restart: {}.",
            u.writes,
            u.seconds,
            u.flush_interval,
            if u.writes > 0.0 {
                u.flushed_keys / u.writes
            } else {
                0.0
            },
            COUNTED,
            u.counted.map_or_else(
                || "n/a (the memory store ends with the process)".to_owned(),
                |n| n.to_string()
            )
        );
        let _ = writeln!(
            out,
            "- Resident set: {:.1} MB idle after start, {:.1} MB peak.",
            report.rss_idle_kb as f64 / 1024.0,
            report.rss_peak_kb as f64 / 1024.0
        );
    }
    if let Some(times) = build_times {
        let _ = writeln!(
            out,
            "\n## Build times\n\n| build | wall |\n|---|---|\n{times}"
        );
    }
    out
}
