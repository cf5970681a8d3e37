//! The authentication benchmark. Generates a service from this template, builds it in release mode,
//! runs it on each backend (PostgreSQL and Redis on loopback, started as the tests start them) with
//! its default configuration (but for the failure limits, see [`run`]) and drives it with wrk: the
//! open route, one warm key, 10,000 keys used uniformly, 100,000 keys with Zipf-distributed
//! popularity, a key with a quota, a key with a rate limit, garbage keys, the first use of fresh
//! keys, the in-process cache turned off, and two workers against one. Throughput and latency are
//! reported as ratios to the open route measured in the same round; store and Redis round trips per
//! request are counted by the service itself (its `/metrics`). Nothing here asserts on timings: the
//! table, a chart of it (SVG) and the goals it prints met or missed are the result.
//!
//! `cargo run --locked --manifest-path tests/Cargo.toml --bin bench` (add `-- --help` for options)

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use actix_api_auth_tests::servers::{Nginx, Postgres, Redis};
use actix_api_auth_tests::{
    Client, Service, cargo, cargo_command, free_port, generate_in_process, repo_root,
    shared_target_dir, tools, work_dir,
};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const NAME: &str = "bench-svc";
const KEYS: &str = "/api/v1/api-keys";
const WRK_SCRIPT: &str = include_str!("../../bench/wrk-rotate.lua");
/// The header of the padded open route: as long a name as `X-API-Key`, and read by no route.
const PADDING_HEADER: &str = "X-Padding";
/// The service runs on one core and wrk on the other, so neither preempts the other.
const SERVICE_CORE: &str = "0";
const LOAD_CORE: &str = "1";
/// Both cores: the service of the two-worker phase, and wrk beside it.
const BOTH_CORES: &str = "0,1";
/// Requests sent with one key to check that `request_count` is exact after the flush.
const COUNTED: u64 = 500;
/// Clients minting keys (and using each once) at the same time, each with its own connection.
const CLIENTS: usize = 16;
/// Lines of the Zipf scenario's request file, each a key drawn by popularity.
const ZIPF_SAMPLES: usize = 200_000;
/// The exponent of the Zipf distribution: the key of rank k is used in proportion to 1 / k^s.
const ZIPF_S: f64 = 1.0;
/// The seed of the draws, so every run and backend sends the same sequence of ranks.
const SEED: u64 = 0x5EED_0015;
/// The metered key's quota: more than any run uses, so it never refuses.
const QUOTA: u64 = 1_000_000_000;
/// The rate-limited key's limit, per second: far above what one core serves, so it never refuses.
const RATE_LIMIT: u64 = 1_000_000;
/// The store round trips per request the Zipf scenario may cost at most.
const ZIPF_STORE_GOAL: f64 = 0.01;

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
    /// Distinct keys used uniformly (in turn); they are the first of the Zipf scenario's keys, so
    /// the service holds max(--keys, --zipf-keys) keys
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Distinct keys of the Zipf scenario (popularity 1/rank), each used once before it
    #[arg(long, default_value_t = 100_000)]
    zipf_keys: usize,
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
    /// A short run (two rounds, 1,000 uniform and 5,000 Zipf keys): the smoke test CI runs
    #[arg(long)]
    quick: bool,
    /// Also time a cold debug build of a generated project and its rebuild after editing a handler
    #[arg(long)]
    build_times: bool,
    /// Print every run as it finishes
    #[arg(long, short)]
    verbose: bool,
    /// Where to write the table, with the chart beside it (same name, `.svg`)
    /// [default: tests/target/template-tests/bench/results.md]
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

    /// The backend's bars in the chart.
    fn colour(self) -> &'static str {
        match self {
            Self::Memory => "#4e79a7",
            Self::Sqlite => "#f28e2b",
            Self::Postgres => "#59a14f",
            Self::PostgresRedis => "#b07aa1",
        }
    }

    fn persistent(self) -> bool {
        self != Self::Memory
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Open,
    Padded,
    Warm,
    Check,
    Uniform,
    Zipf,
    Metered,
    RateLimited,
    Garbage,
    CacheOff,
}

/// The scenarios of the main phase, in the order of a round (every other round runs backwards).
const MAIN: [Scenario; 9] = [
    Scenario::Open,
    Scenario::Padded,
    Scenario::Warm,
    Scenario::Check,
    Scenario::Uniform,
    Scenario::Zipf,
    Scenario::Metered,
    Scenario::RateLimited,
    Scenario::Garbage,
];

/// The scenarios drawn in the chart.
const CHARTED: [Scenario; 8] = [
    Scenario::Padded,
    Scenario::Warm,
    Scenario::Check,
    Scenario::Uniform,
    Scenario::Zipf,
    Scenario::Metered,
    Scenario::RateLimited,
    Scenario::Garbage,
];

impl Scenario {
    fn label(self, args: &Args) -> String {
        match self {
            Self::Open => "open route `/health`".into(),
            Self::Padded => "open route, with a header of a key's size it does not read".into(),
            Self::Warm => "warm key, `/protected`".into(),
            Self::Check => "warm key, forward-auth `/auth/check`".into(),
            Self::Uniform => format!(
                "{} keys used uniformly (in turn)",
                thousands(args.keys as f64)
            ),
            Self::Zipf => format!(
                "{} keys, Zipf popularity (s = {ZIPF_S:.1})",
                thousands(args.zipf_keys as f64)
            ),
            Self::Metered => "key with a quota (`remaining`)".into(),
            Self::RateLimited => format!(
                "key with a rate limit ({} per s)",
                thousands(RATE_LIMIT as f64)
            ),
            Self::Garbage => "garbage keys, `/protected` (401)".into(),
            Self::CacheOff => "warm key, in-process cache off".into(),
        }
    }

    /// The label under the scenario's bars in the chart.
    fn short(self, args: &Args) -> String {
        match self {
            Self::Open => "open route".into(),
            Self::Padded => "open + header".into(),
            Self::Warm => "warm key".into(),
            Self::Check => "forward-auth".into(),
            Self::Uniform => format!("{} uniform", short_count(args.keys)),
            Self::Zipf => format!("Zipf {}", short_count(args.zipf_keys)),
            Self::Metered => "quota".into(),
            Self::RateLimited => "rate limit".into(),
            Self::Garbage => "garbage (401)".into(),
            Self::CacheOff => "cache off".into(),
        }
    }

    /// The throughput the issue asks for, as a fraction of the open route's.
    fn goal(self) -> Option<f64> {
        match self {
            Self::Warm => Some(0.95),
            Self::Zipf | Self::Check | Self::Garbage => Some(0.90),
            Self::Metered | Self::RateLimited => Some(0.80),
            _ => None,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Open | Self::Padded => "/health",
            Self::Check => "/auth/check",
            _ => "/protected",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Self::Open => "open.txt",
            Self::Padded => "padded.txt",
            Self::Warm | Self::Check | Self::CacheOff => "warm.txt",
            Self::Uniform => "uniform.txt",
            Self::Zipf => "zipf.txt",
            Self::Metered => "metered.txt",
            Self::RateLimited => "rate-limited.txt",
            Self::Garbage => "garbage.txt",
        }
    }
}

/// Where wrk runs: on which cores, with how many threads.
#[derive(Clone, Copy)]
struct LoadGen {
    cores: &'static str,
    threads: u32,
}

/// wrk on the core the service leaves free, as in every phase but the two-worker one.
const BESIDE: LoadGen = LoadGen {
    cores: LOAD_CORE,
    threads: 1,
};
/// wrk on both cores, sharing them with a two-worker service.
const SHARING: LoadGen = LoadGen {
    cores: BOTH_CORES,
    threads: 2,
};

/// One wrk run, with the store and Redis round trips the service counted during it.
#[derive(Clone, Copy, Default)]
struct Load {
    requests: u64,
    non_2xx: u64,
    socket_errors: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    /// Key lookups and quota takes.
    store_trips: f64,
    /// Redis cache lookups and shared rate-limit calls.
    redis_trips: f64,
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
    /// The open route's time per request in µs (of the service's one core): the median, over the
    /// rounds, of the faster of each round's two open runs, the run the ratios are taken against.
    open_us: f64,
    p99_ratio: f64,
    store_per_request: f64,
    redis_per_request: f64,
    non_2xx: u64,
    socket_errors: u64,
}

struct BackendReport {
    backend: Backend,
    rows: Vec<Row>,
    cold: Cold,
    usage: UsageWrites,
    scaling: Scaling,
    rss_idle_kb: u64,
    /// After the rounds, with every Zipf key used.
    rss_cached_kb: u64,
    rss_peak_kb: u64,
}

impl BackendReport {
    fn row(&self, scenario: Scenario) -> &Row {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario)
            .expect("every row")
    }
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

/// The warm key on a service with two workers (both cores, shared with wrk) against one worker.
struct Scaling {
    one_rps: f64,
    two_rps: f64,
    /// The median of the per-round ratios.
    ratio: f64,
    /// actix workers counted in each process (`None` when they could not be counted).
    one_workers: Option<usize>,
    two_workers: Option<usize>,
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.quick {
        args.seconds = 1;
        args.rounds = 2;
        args.keys = args.keys.min(1_000);
        args.zipf_keys = args.zipf_keys.min(5_000);
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
    if args.keys == 0 || args.zipf_keys == 0 || args.rounds == 0 {
        return Err("--keys, --zipf-keys and --rounds must be at least 1".into());
    }
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
    let mut gateway = None;
    for (i, &backend) in args.backends.iter().enumerate() {
        let log = dir.join(format!("{}.log", backend.label()));
        eprintln!(
            "bench: {} (service log: {})...",
            backend.label(),
            log.display()
        );
        let _ = std::fs::remove_file(&log);
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
        // The service's defaults, logging included (info, to the log file above), with one
        // exception: the failure limits are off. From wrk's one address they would turn the garbage
        // scenario into 429s after a few hundred requests; the benchmark measures the rejection
        // itself.
        let mut env = vec![
            ("DATABASE_URL".to_owned(), database_url),
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
        let started = Instant::now();
        reports.push(bench_backend(backend, &binary, &dir, &env, &log, args)?);
        if i == 0 {
            gateway = Some(behind_nginx(backend, &binary, &dir, &env, &log, args)?);
        }
        eprintln!(
            "bench: {} done in {:.0?}",
            backend.label(),
            started.elapsed()
        );
    }
    drop((postgres, redis));

    let build_times = if args.build_times {
        Some(build_times(&dir)?)
    } else {
        None
    };
    let out = args.out.clone().unwrap_or_else(|| dir.join("results.md"));
    let svg = out.with_extension("svg");
    let svg_name = svg.file_name().map_or_else(
        || "results.svg".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let table = render(
        args,
        &reports,
        gateway.as_ref(),
        build_times.as_deref(),
        &svg_name,
    );
    print!("{table}");
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, &table)?;
    std::fs::write(&svg, chart(args, &reports))?;
    eprintln!(
        "bench: table written to {}, chart to {}",
        out.display(),
        svg.display()
    );
    Ok(())
}

fn generate(dir: &Path, name: &str, defines: &[&str]) -> Result<PathBuf> {
    let project = dir.join(name);
    if project.exists() {
        std::fs::remove_dir_all(&project)?;
    }
    Ok(generate_in_process(dir, name, defines)?)
}

/// Starts the service on `cores` (one core: one actix worker, which counts the cores it may use),
/// with its log appended to `log`; mints its admin key and a warm key, and returns them once the
/// key has been used.
fn start(
    binary: &Path,
    dir: &Path,
    env: &[(String, String)],
    extra: &[(&str, &str)],
    cores: &str,
    log: &Path,
) -> Result<(Service, Client, String, String)> {
    let admin_file = dir.join(format!("admin-{}.key", free_port()));
    let port = free_port();
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let child = Command::new("taskset")
        .args(["-c", cores])
        .arg(binary)
        .args(["serve", "--admin-key-file"])
        .arg(&admin_file)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(extra.iter().copied())
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .stdout(Stdio::null())
        .stderr(output)
        .spawn()?;
    let service = Service::adopt(child, port);
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
    let (warm, _) = create_key(&client, &admin, json!({ "name": "warm" }))?;
    let (status, _) = client.send("GET", "/protected", Some(&warm), None);
    if status != 200 {
        return Err(format!("a fresh key was answered {status}").into());
    }
    Ok((service, client, admin, warm))
}

/// Creates a key over HTTP from `body` (its name, and its limits if any); returns the key and its id.
fn create_key(client: &Client, admin: &str, body: Value) -> Result<(String, String)> {
    let (status, body) = client.send("POST", KEYS, Some(admin), Some(body));
    match (status, body["key"].as_str(), body["id"].as_str()) {
        (201, Some(key), Some(id)) => Ok((key.to_owned(), id.to_owned())),
        _ => Err(format!("creating a key answered {status}: {body}").into()),
    }
}

/// `each` over `items` from [`CLIENTS`] threads, each with its own client (so its own connection);
/// the answers in the order of `items`.
fn parallel<T: Sync, R: Send>(
    base_url: &str,
    items: &[T],
    each: impl Fn(&Client, &T) -> std::result::Result<R, String> + Sync,
) -> Result<Vec<R>> {
    let each = &each;
    let chunk = items.len().div_ceil(CLIENTS).max(1);
    let parts: Vec<std::result::Result<Vec<R>, String>> = std::thread::scope(|scope| {
        let threads: Vec<_> = items
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let client = Client::new(base_url);
                    part.iter().map(|item| each(&client, item)).collect()
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .unwrap_or_else(|_| Err("a client thread panicked".to_owned()))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(items.len());
    for part in parts {
        all.extend(part?);
    }
    Ok(all)
}

/// Mints `n` keys named `{prefix}-{i}` over HTTP, [`CLIENTS`] at a time.
fn mint(service: &Service, admin: &str, prefix: &str, n: usize) -> Result<Vec<String>> {
    let indices: Vec<usize> = (0..n).collect();
    parallel(&service.base_url, &indices, |client, i| {
        create_key(client, admin, json!({ "name": format!("{prefix}-{i}") }))
            .map(|(key, _)| key)
            .map_err(|err| err.to_string())
    })
}

/// Uses each key once, [`CLIENTS`] at a time: the warm-up.
fn use_each(service: &Service, keys: &[String]) -> Result<()> {
    parallel(&service.base_url, keys, |client, key| {
        match client.send("GET", "/protected", Some(key), None).0 {
            200 => Ok(()),
            status => Err(format!("a valid key was answered {status} in the warm-up")),
        }
    })?;
    Ok(())
}

/// splitmix64: a small seeded generator, for drawing the Zipf samples (never for secrets).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (the modulo's bias is negligible for n far below 2^64).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `samples` indices into `n` keys, the key of popularity rank k (from 1) drawn with probability
/// proportional to 1 / k^s: inverse CDF, by binary search over the cumulative weights. Ranks are
/// given to the keys in a shuffled order, so the uniform scenario's keys (the first minted) are
/// spread over the ranks rather than being the most popular ones.
fn zipf_samples(n: usize, s: f64, samples: usize, rng: &mut SplitMix) -> Vec<usize> {
    let mut key_of_rank: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        key_of_rank.swap(i, rng.below(i + 1));
    }
    let mut cumulative = Vec::with_capacity(n);
    let mut total = 0.0;
    for k in 1..=n {
        total += (k as f64).powf(-s);
        cumulative.push(total);
    }
    (0..samples)
        .map(|_| {
            let u = rng.unit() * total;
            let rank = cumulative.partition_point(|&c| c <= u).min(n - 1);
            key_of_rank[rank]
        })
        .collect()
}

fn write_keys(path: &Path, keys: impl IntoIterator<Item = impl AsRef<str>>) -> Result<()> {
    let mut text = String::new();
    for key in keys {
        text.push_str(key.as_ref());
        text.push('\n');
    }
    Ok(std::fs::write(path, text)?)
}

fn bench_backend(
    backend: Backend,
    binary: &Path,
    dir: &Path,
    env: &[(String, String)],
    log: &Path,
    args: &Args,
) -> Result<BackendReport> {
    let (service, client, admin, warm) = start(binary, dir, env, &[], SERVICE_CORE, log)?;
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle_kb = proc_status_kb(service.pid(), "VmRSS")?;

    // The uniform scenario's keys are the first of the Zipf scenario's: the service holds
    // max(keys, zipf_keys) keys, not their sum.
    let minting = Instant::now();
    let pool = mint(&service, &admin, "key", args.keys.max(args.zipf_keys))?;
    let cold = mint(&service, &admin, "cold", args.cold)?;
    let (metered, _) = create_key(
        &client,
        &admin,
        json!({ "name": "metered", "remaining": QUOTA }),
    )?;
    let (limited, _) = create_key(
        &client,
        &admin,
        json!({ "name": "rate-limited", "rate_limit": { "requests": RATE_LIMIT, "window": 1 } }),
    )?;
    let (counted_key, counted_id) = create_key(&client, &admin, json!({ "name": "counted" }))?;
    let minted = minting.elapsed();
    let warming = Instant::now();
    let before_warmup = scrape(&client);
    use_each(&service, &pool)?;
    use_each(&service, &[metered.clone(), limited.clone()])?;
    let warmed = warming.elapsed();
    // The warm-up's usage is written in one batch within a flush interval; let that happen before
    // the rounds rather than in the first of them.
    let flushed = await_flush(&client, &before_warmup, pool.len());
    eprintln!(
        "bench:   minted {} keys in {:.1} s ({} clients, {:.0} keys/s), used each once in {:.1} s, {}",
        thousands((pool.len() + cold.len() + 3) as f64),
        minted.as_secs_f64(),
        CLIENTS,
        (pool.len() + cold.len() + 3) as f64 / minted.as_secs_f64(),
        warmed.as_secs_f64(),
        if flushed {
            format!(
                "their usage flushed {:.1} s later",
                (warming.elapsed() - warmed).as_secs_f64()
            )
        } else {
            "their usage not yet flushed after 30 s".to_owned()
        }
    );

    let mut rng = SplitMix(SEED);
    let zipf = zipf_samples(args.zipf_keys, ZIPF_S, ZIPF_SAMPLES, &mut rng);
    if args.verbose {
        let mut counts = vec![0u32; args.zipf_keys];
        zipf.iter().for_each(|&i| counts[i] += 1);
        let top = counts.iter().copied().max().unwrap_or(0);
        eprintln!(
            "bench:   Zipf samples: {} requests over {} distinct keys of {}; the most popular key sends {:.1} % of them",
            thousands(zipf.len() as f64),
            thousands(counts.iter().filter(|&&c| c > 0).count() as f64),
            thousands(args.zipf_keys as f64),
            100.0 * f64::from(top) / zipf.len() as f64,
        );
    }
    write_keys(&dir.join(Scenario::Open.file()), ["-"])?;
    // A header no route reads, as long as the key's: what carrying a key costs before it is read.
    let padding = format!("{PADDING_HEADER}: {}", "x".repeat(warm.len()));
    write_keys(&dir.join(Scenario::Padded.file()), [&padding])?;
    write_keys(&dir.join(Scenario::Warm.file()), [&warm])?;
    write_keys(&dir.join(Scenario::Uniform.file()), &pool[..args.keys])?;
    write_keys(
        &dir.join(Scenario::Zipf.file()),
        zipf.iter().map(|&i| &pool[i]),
    )?;
    write_keys(&dir.join(Scenario::Metered.file()), [&metered])?;
    write_keys(&dir.join(Scenario::RateLimited.file()), [&limited])?;
    write_keys(&dir.join(Scenario::Garbage.file()), garbage(&warm))?;

    let flushes_before = scrape(&client);
    let phase = Instant::now();
    wrk(
        &client,
        &service.base_url,
        Scenario::Warm.path(),
        &dir.join(Scenario::Warm.file()),
        BESIDE,
        1,
        args.connections,
    )?;
    let rounds = run_rounds(&service, &client, dir, &MAIN, args)?;
    let rss_cached_kb = proc_status_kb(service.pid(), "VmRSS")?;
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
    let (service, client, admin, warm) = start(
        binary,
        dir,
        env,
        &[("KEY_CACHE_TTL_MS", "0")],
        SERVICE_CORE,
        log,
    )?;
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
    write_keys(&dir.join(Scenario::CacheOff.file()), [&warm])?;
    // Each cache-off run is paired with an open-route run on the same process.
    let off_rounds = run_rounds(
        &service,
        &client,
        dir,
        &[Scenario::Open, Scenario::CacheOff],
        args,
    )?;
    drop(service);

    let scaling = scaling(binary, dir, env, log, args)?;

    let mut rows: Vec<Row> = MAIN
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
        scaling,
        rss_idle_kb,
        rss_cached_kb,
        rss_peak_kb,
    })
}

/// The warm key on two services at once: one on core 0 with wrk on core 1 (the setup of every other
/// phase), one on both cores, so with two actix workers, and wrk (two threads) sharing those cores
/// with it. Rounds alternate between them, as in [`run_rounds`]; the ratio is taken per round.
fn scaling(
    binary: &Path,
    dir: &Path,
    env: &[(String, String)],
    log: &Path,
    args: &Args,
) -> Result<Scaling> {
    let (one, one_client, _, one_warm) = start(binary, dir, env, &[], SERVICE_CORE, log)?;
    let (two, two_client, _, two_warm) = start(binary, dir, env, &[], BOTH_CORES, log)?;
    let one_file = dir.join("warm-one-worker.txt");
    let two_file = dir.join("warm-two-workers.txt");
    write_keys(&one_file, [&one_warm])?;
    write_keys(&two_file, [&two_warm])?;
    let setups = [
        (&one, &one_client, &one_file, BESIDE),
        (&two, &two_client, &two_file, SHARING),
    ];
    for (service, client, file, load) in setups {
        wrk(
            client,
            &service.base_url,
            "/protected",
            file,
            load,
            1,
            args.connections,
        )?;
    }
    let mut ones = Vec::new();
    let mut twos = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..args.rounds {
        let mut order = [0, 1];
        if round % 2 == 1 {
            order.reverse();
        }
        let mut rps = [0.0; 2];
        for i in order {
            let (service, client, file, load) = setups[i];
            let run = wrk(
                client,
                &service.base_url,
                "/protected",
                file,
                load,
                args.seconds,
                args.connections,
            )?;
            if args.verbose {
                eprintln!(
                    "bench:   round {round} warm key, {} worker(s): {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs",
                    i + 1,
                    run.rps(),
                    run.p50_us,
                    run.p99_us
                );
            }
            rps[i] = run.rps();
        }
        ones.push(rps[0]);
        twos.push(rps[1]);
        ratios.push(rps[1] / rps[0]);
    }
    let scaling = Scaling {
        one_rps: median(ones),
        two_rps: median(twos),
        ratio: median(ratios),
        one_workers: workers(one.pid()),
        two_workers: workers(two.pid()),
    };
    drop((one, two));
    Ok(scaling)
}

/// The actix workers of a process: its threads named `actix-server worker N` (cut to 15 bytes).
fn workers(pid: u32) -> Option<usize> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let count = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("actix-server wo"))
        .count();
    (count > 0).then_some(count)
}

/// Waits, at most 30 s, until the usage of `used` more keys than in `before` (a scrape) has been
/// flushed; whether it was.
fn await_flush(client: &Client, before: &str, used: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    let flushed = |metrics: &str| sum(metrics, "usage_flushed_keys_total");
    while Instant::now() < deadline {
        if flushed(&scrape(client)) - flushed(before) >= used as f64 {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Requests through nginx to an upstream, straight and through `auth_request` to the forward-auth
/// check.
struct Gateway {
    backend: Backend,
    straight_rps: f64,
    checked_rps: f64,
    /// The median of the per-round ratios, checked over straight.
    ratio: f64,
}

/// nginx in front of an upstream that answers at once, configured as `deploy/nginx.conf` ships, plus
/// a location that skips the check: the same requests both ways, in interleaved rounds.
fn behind_nginx(
    backend: Backend,
    binary: &Path,
    dir: &Path,
    env: &[(String, String)],
    log: &Path,
    args: &Args,
) -> Result<Gateway> {
    let proxy = [("TRUSTED_PROXIES", "127.0.0.1")];
    let (service, client, admin, _) = start(binary, dir, env, &proxy, SERVICE_CORE, log)?;
    let (key, _) = create_key(
        &client,
        &admin,
        json!({"name": "gateway", "scopes": ["reports:read"]}),
    )?;
    let shipped = std::fs::read_to_string(dir.join(NAME).join("deploy").join("nginx.conf"))?;
    let (listen, upstream) = (free_port(), free_port());
    let service_port = service.base_url.rsplit(':').next().unwrap_or_default();
    let check = "    location = /_api_key_check {";
    if !shipped.contains(check) {
        return Err(
            format!("deploy/nginx.conf has no `{check}` to put the straight route before").into(),
        );
    }
    let config = shipped
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{listen}"))
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{service_port}"))
        .replace("127.0.0.1:9000", &format!("127.0.0.1:{upstream}"))
        .replace(
            check,
            &format!(
                "    location /straight/ {{\n        proxy_http_version 1.1;\n        \
                 proxy_set_header Connection \"\";\n        proxy_pass http://reports;\n    }}\n\n{check}"
            ),
        );
    let http = format!(
        "{config}\nserver {{ listen 127.0.0.1:{upstream}; location / {{ return 200 'ok'; }} }}\n"
    );
    let nginx = Nginx::start(&http, listen);
    let pinned = Command::new("taskset")
        .args(["-p", "-c", LOAD_CORE, &nginx.pid().to_string()])
        .stdout(Stdio::null())
        .status()?;
    if !pinned.success() {
        return Err("taskset could not pin nginx".into());
    }
    let base = format!("http://127.0.0.1:{listen}");
    let (open, keyed) = (dir.join(Scenario::Open.file()), dir.join("gateway.txt"));
    write_keys(&keyed, [&key])?;
    let runs = [("/straight/report", &open), ("/reports/report", &keyed)];
    let mut rps = [Vec::new(), Vec::new()];
    let mut ratios = Vec::new();
    for round in 0..=args.rounds {
        let mut this = [0.0; 2];
        for i in if round % 2 == 0 { [0, 1] } else { [1, 0] } {
            let (path, file) = runs[i];
            let load = wrk(
                &client,
                &base,
                path,
                file,
                BESIDE,
                args.seconds,
                args.connections,
            )?;
            if load.non_2xx > 0 {
                return Err(format!(
                    "{} of the requests to {path} through nginx failed",
                    load.non_2xx
                )
                .into());
            }
            this[i] = load.rps();
        }
        // The first round warms nginx's connections to the service and the upstream.
        if round > 0 {
            rps[0].push(this[0]);
            rps[1].push(this[1]);
            ratios.push(this[1] / this[0]);
        }
    }
    drop(nginx);
    drop(service);
    let [straight, checked] = rps;
    Ok(Gateway {
        backend,
        straight_rps: median(straight),
        checked_rps: median(checked),
        ratio: median(ratios),
    })
}

/// `args.rounds` rounds of `scenarios`, run in turn within each round between two runs of the open
/// route.
fn run_rounds(
    service: &Service,
    client: &Client,
    dir: &Path,
    scenarios: &[Scenario],
    args: &Args,
) -> Result<Vec<Vec<(Scenario, Load)>>> {
    (0..args.rounds)
        .map(|round| {
            // The open route at both ends of the round: each scenario is compared with the faster
            // of the two (see [`row`]). Every other round runs backwards, so no scenario always
            // follows another: a slow drift of the machine or a periodic pause of the service does
            // not favour one of them.
            let mut order = vec![Scenario::Open];
            order.extend(scenarios.iter().filter(|s| **s != Scenario::Open));
            order.push(Scenario::Open);
            if round % 2 == 1 {
                order.reverse();
            }
            order
                .into_iter()
                .map(|scenario| {
                    let load = wrk(
                        client,
                        &service.base_url,
                        scenario.path(),
                        &dir.join(scenario.file()),
                        BESIDE,
                        args.seconds,
                        args.connections,
                    )?;
                    if args.verbose {
                        eprintln!(
                            "bench:   round {round} {:?}: {:.0} req/s, p50 {:.0} µs, p99 {:.0} µs, {:.4} store / {:.4} Redis round trips per request",
                            scenario,
                            load.rps(),
                            load.p50_us,
                            load.p99_us,
                            load.store_trips / load.requests.max(1) as f64,
                            load.redis_trips / load.requests.max(1) as f64,
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

/// One wrk run of `GET path` with the keys of `file` in turn, and the round trips the service
/// counted meanwhile.
fn wrk(
    client: &Client,
    base_url: &str,
    path: &str,
    file: &Path,
    load: LoadGen,
    seconds: u32,
    connections: u32,
) -> Result<Load> {
    let before = scrape(client);
    let output = Command::new("taskset")
        .args(["-c", load.cores, "wrk"])
        .args([
            format!("-t{}", load.threads),
            format!("-c{connections}"),
            format!("-d{seconds}s"),
        ])
        .arg("-s")
        .arg(file.with_file_name("wrk-rotate.lua"))
        .arg(base_url)
        .arg("--")
        .arg(path)
        .arg(file)
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
    let mut run = Load {
        requests: field("requests")? as u64,
        non_2xx: field("non2xx")? as u64,
        socket_errors: field("socket_errors")? as u64,
        seconds: field("duration_us")? / 1e6,
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        ..Load::default()
    };
    let delta = |name: &str| sum(&after, name) - sum(&before, name);
    run.store_trips = delta("storage_operations_total{operation=\"lookup\"}")
        + delta("storage_operations_total{operation=\"use_quota\"}");
    // `shared_rate_limit_calls_total` exists in builds with Redis; elsewhere it adds nothing.
    run.redis_trips =
        delta("key_cache_lookups_total{cache=\"redis\"") + delta("shared_rate_limit_calls_total");
    Ok(run)
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
/// faster of the round's two open-route runs (a pause of the service that slows one of them must not
/// flatter the rest), and the median of those ratios is reported. A p99 is set by short
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
            .filter(|(s, _)| *s == Scenario::Open)
            .map(|r| r.1)
            .max_by(|a, b| a.rps().total_cmp(&b.rps()));
        for &(s, load) in round {
            if s == scenario {
                let base = match open {
                    Some(open) if s != Scenario::Open => open,
                    _ => load,
                };
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
        open_us: median(opens.iter().map(|l| 1e6 / l.rps()).collect()),
        p99_ratio: p99_us / median(opens.iter().map(|l| l.p99_us).collect()),
        store_per_request: loads.iter().map(|l| l.store_trips).sum::<f64>() / requests as f64,
        redis_per_request: loads.iter().map(|l| l.redis_trips).sum::<f64>() / requests as f64,
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

/// `n` as the chart's labels say it: 100k, 5k, 1.5k, 750.
fn short_count(n: usize) -> String {
    match n {
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n if n >= 1000 => format!("{:.1}k", n as f64 / 1000.0),
        n => n.to_string(),
    }
}

/// Each goal of the issue for one backend, met or missed (printed, never asserted). Three decimals,
/// so that a ratio just under its goal does not read as the goal.
fn goals(args: &Args, report: &BackendReport) -> String {
    let verdict = |met: bool| if met { "met" } else { "**missed**" };
    let mut parts = Vec::new();
    for scenario in CHARTED {
        let Some(goal) = scenario.goal() else {
            continue;
        };
        let row = report.row(scenario);
        let part = if scenario == Scenario::Zipf {
            format!(
                "{} {:.3} × open, {}, with {:.4} store round trips/req (goal ≥ {goal:.2}, {}, with ≤ {ZIPF_STORE_GOAL} store round trips/req): {}",
                scenario.short(args),
                row.rps_ratio,
                over(row),
                row.store_per_request,
                budget(row, goal),
                verdict(row.rps_ratio >= goal && row.store_per_request <= ZIPF_STORE_GOAL)
            )
        } else {
            format!(
                "{} {:.3} × open, {} (goal ≥ {goal:.2}, {}): {}",
                scenario.short(args),
                row.rps_ratio,
                over(row),
                budget(row, goal),
                verdict(row.rps_ratio >= goal)
            )
        };
        parts.push(part);
    }
    format!(
        "- {}: {}. The open route carrying a header of a key's size ran at {:.3} × open, {}.",
        report.backend.label(),
        parts.join("; "),
        report.row(Scenario::Padded).rps_ratio,
        over(report.row(Scenario::Padded)),
    )
}

/// What a request costs beyond an open-route request, in µs, at the ratio given: derived from the
/// ratio, so that a cost within a goal's [`budget`] is a ratio that meets it.
fn beyond_open(row: &Row, ratio: f64) -> f64 {
    row.open_us * (1.0 / ratio - 1.0)
}

/// A row's own cost beyond an open-route request, as the goals print it.
fn over(row: &Row) -> String {
    format!("{:+.2} µs a request", beyond_open(row, row.rps_ratio))
}

/// What a goal leaves a request beyond an open-route request.
fn budget(row: &Row, goal: f64) -> String {
    format!("at most {:+.2} µs", beyond_open(row, goal))
}

fn render(
    args: &Args,
    reports: &[BackendReport],
    gateway: Option<&Gateway>,
    build_times: Option<&str>,
    svg: &str,
) -> String {
    let mut out = String::new();
    let keys = thousands(args.keys as f64);
    let zipf = thousands(args.zipf_keys as f64);
    let _ = writeln!(out, "# Authentication benchmark\n");
    let _ = writeln!(out, "Machine: {}.", machine());
    let _ = writeln!(
        out,
        "Release build, the service's default configuration (logging at `info`, to a file) but for the \
         failure limits, which are off. The service runs on core {SERVICE_CORE} (so one actix worker, \
         as litestar-api-auth ran one uvicorn worker) and wrk (`-t1 -c{}`, {} s per run) on core \
         {LOAD_CORE}. Medians of {} interleaved round(s), every other one in reverse order. Every round \
         starts and ends with the open route, and throughput ratios are taken per round against the \
         faster of those two runs, on the same process; the p99 \
         ratio is the scenario's median p99 over the open route's. The service holds {} keys, each \
         used once before the rounds; the {keys} uniform keys are among the {zipf} Zipf keys. Store \
         round trips are key lookups and quota takes; Redis round trips are cache lookups and shared \
         rate-limit calls. Two workers: the warm key on a service pinned to cores {BOTH_CORES} (wrk \
         `-t2` on the same cores) against one worker on core {SERVICE_CORE} (wrk on core {LOAD_CORE}), \
         in interleaved rounds.\n",
        args.connections,
        args.seconds,
        args.rounds,
        thousands(args.keys.max(args.zipf_keys) as f64),
    );
    let _ = writeln!(
        out,
        "The chart of the throughput ratios is `{svg}`, beside this file.\n"
    );
    let _ = writeln!(out, "## Summary\n");
    let _ = writeln!(
        out,
        "Throughput as a multiple of the open route's (req/s); the p99 ratio of the warm key; store \
         round trips per request of the Zipf scenario.\n"
    );
    let _ = writeln!(
        out,
        "| backend | warm key | forward-auth | {} | {} | store round trips / req, {} | quota | rate limit | garbage | warm key p99 × open | 2 workers / 1 worker | RSS idle / {} keys cached / peak |",
        Scenario::Uniform.short(args),
        Scenario::Zipf.short(args),
        Scenario::Zipf.short(args),
        short_count(args.zipf_keys),
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for report in reports {
        let ratio = |s: Scenario| format!("{:.2}", report.row(s).rps_ratio);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.4} | {} | {} | {} | {:.2} | {:.2} | {:.1} / {:.1} / {:.1} MB |",
            report.backend.label(),
            ratio(Scenario::Warm),
            ratio(Scenario::Check),
            ratio(Scenario::Uniform),
            ratio(Scenario::Zipf),
            report.row(Scenario::Zipf).store_per_request,
            ratio(Scenario::Metered),
            ratio(Scenario::RateLimited),
            ratio(Scenario::Garbage),
            report.row(Scenario::Warm).p99_ratio,
            report.scaling.ratio,
            report.rss_idle_kb as f64 / 1024.0,
            report.rss_cached_kb as f64 / 1024.0,
            report.rss_peak_kb as f64 / 1024.0,
        );
    }
    let _ = writeln!(out, "\n## Goals\n");
    let _ = writeln!(
        out,
        "Throughput × open on every backend: warm key ≥ 0.95, the forward-auth check with a warm key \
         ≥ 0.90, Zipf ≥ 0.90 with ≤ {ZIPF_STORE_GOAL} store round trips per request, keys with a \
         quota or a rate limit ≥ 0.80, garbage keys ≥ 0.90. Printed, never asserted. Beside each \
         ratio: what a request costs beyond an open-route request at that ratio, in µs of the \
         service's core (the open route's time per request, the median over the rounds of each round's \
         faster open run, × (1/ratio - 1)), and what the goal leaves on the same terms.\n"
    );
    for report in reports {
        let _ = writeln!(out, "{}", goals(args, report));
    }
    for report in reports {
        let _ = writeln!(out, "\n## {}\n", report.backend.label());
        let _ = writeln!(
            out,
            "| scenario | req/s | p50 | p99 | × open (req/s) | µs over open | × open (p99) | store round trips / req | Redis round trips / req | non-2xx |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
        for row in &report.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {:.2} | {:+.2} | {:.2} | {:.4} | {:.4} | {}{} |",
                row.scenario.label(args),
                thousands(row.rps),
                ms(row.p50_us),
                ms(row.p99_us),
                row.rps_ratio,
                beyond_open(row, row.rps_ratio),
                row.p99_ratio,
                row.store_per_request,
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
            "- Resident set: {:.1} MB idle after start, {:.1} MB with {zipf} keys cached (after the rounds), \
             {:.1} MB peak{}.",
            report.rss_idle_kb as f64 / 1024.0,
            report.rss_cached_kb as f64 / 1024.0,
            report.rss_peak_kb as f64 / 1024.0,
            if report.backend.persistent() {
                ""
            } else {
                " (the memory store holds the keys in the same process)"
            }
        );
        let s = &report.scaling;
        let count = |n: Option<usize>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let _ = writeln!(
            out,
            "- Two workers: the warm key at {} req/s with the service on cores {BOTH_CORES} ({} actix workers) \
             and wrk `-t2` sharing them, against {} req/s with one worker on core {SERVICE_CORE} ({} counted) \
             and wrk on core {LOAD_CORE}: {:.2} × (median of the per-round ratios).",
            thousands(s.two_rps),
            count(s.two_workers),
            thousands(s.one_rps),
            count(s.one_workers),
            s.ratio,
        );
    }
    if let Some(g) = gateway {
        let _ = writeln!(
            out,
            "\n## Behind nginx\n\nnginx as `deploy/nginx.conf` ships it (one process, on core {LOAD_CORE} \
             with wrk), in front of an upstream that answers at once, on the {} backend: {} req/s \
             straight to the upstream, {} req/s through `auth_request` to the forward-auth check with \
             a warm key (the service on core {SERVICE_CORE}): {:.2} × (median of the per-round ratios).",
            g.backend.label(),
            thousands(g.straight_rps),
            thousands(g.checked_rps),
            g.ratio,
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

/// Text for an SVG document.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The throughput ratios as grouped bars: a group per scenario, a bar per backend, the goal as a
/// dashed line. Hand-written SVG, self-contained.
fn chart(args: &Args, reports: &[BackendReport]) -> String {
    const WIDTH: f64 = 780.0;
    const HEIGHT: f64 = 400.0;
    const LEFT: f64 = 50.0;
    const RIGHT: f64 = WIDTH - 10.0;
    const TOP: f64 = 64.0;
    const BOTTOM: f64 = 322.0;
    const MAX: f64 = 1.1;
    const GAP: f64 = 4.0;
    let y = |value: f64| BOTTOM - value.clamp(0.0, MAX) / MAX * (BOTTOM - TOP);
    let group = (RIGHT - LEFT) / CHARTED.len() as f64;
    let bars = reports.len().max(1) as f64;
    let bar = ((group - 16.0 - GAP * (bars - 1.0)) / bars).min(20.0);
    let title = "Throughput × open route (req/s, median), by scenario and backend";
    let mut svg = String::new();
    let _ = writeln!(svg, r##"<?xml version="1.0" encoding="UTF-8"?>"##);
    let _ = writeln!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Arial, sans-serif" font-size="11" fill="#222">"##
    );
    let _ = writeln!(svg, "<title>{}</title>", xml(title));
    let _ = writeln!(
        svg,
        r##"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>"##
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text>"##,
        xml(title)
    );
    // The legend: one swatch per backend.
    let mut x = LEFT;
    for report in reports {
        let label = report.backend.label();
        let _ = writeln!(
            svg,
            r##"<rect x="{x:.1}" y="31" width="11" height="11" fill="{}"/><text x="{:.1}" y="41">{}</text>"##,
            report.backend.colour(),
            x + 15.0,
            xml(label)
        );
        x += 15.0 + 7.0 * label.len() as f64 + 16.0;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{x:.1}" y1="36.5" x2="{:.1}" y2="36.5" stroke="#c00" stroke-width="1.5" stroke-dasharray="5 3"/><text x="{:.1}" y="41">goal</text>"##,
        x + 22.0,
        x + 26.0
    );
    // The value axis, 0 to 1.1, with a grid line every 0.2 and a darker one at 1 (the open route).
    for tick in [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] {
        let at = y(tick);
        let stroke = if tick == 1.0 { "#999" } else { "#e4e4e4" };
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{at:.1}" x2="{RIGHT}" y2="{at:.1}" stroke="{stroke}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{tick:.1}</text>"##,
            LEFT - 6.0,
            at + 4.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<text x="14" y="{:.1}" text-anchor="middle" transform="rotate(-90 14 {:.1})">× open route</text>"##,
        (TOP + BOTTOM) / 2.0,
        (TOP + BOTTOM) / 2.0
    );
    for (g, scenario) in CHARTED.into_iter().enumerate() {
        let left = LEFT + g as f64 * group;
        let first = left + (group - (bars * bar + (bars - 1.0) * GAP)) / 2.0;
        for (b, report) in reports.iter().enumerate() {
            let ratio = report.row(scenario).rps_ratio;
            let x = first + b as f64 * (bar + GAP);
            let top = y(ratio);
            let _ = writeln!(
                svg,
                r##"<rect x="{x:.1}" y="{top:.1}" width="{bar:.1}" height="{:.1}" fill="{}"><title>{}, {}: {ratio:.2} × open</title></rect>"##,
                BOTTOM - top,
                report.backend.colour(),
                xml(report.backend.label()),
                xml(&scenario.short(args))
            );
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" font-size="9" text-anchor="middle" stroke="#fff" stroke-width="3" stroke-linejoin="round" paint-order="stroke">{ratio:.2}</text>"##,
                x + bar / 2.0,
                top - 3.0
            );
        }
        if let Some(goal) = scenario.goal() {
            let at = y(goal);
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" y1="{at:.1}" x2="{:.1}" y2="{at:.1}" stroke="#c00" stroke-width="1.5" stroke-dasharray="5 3"/>"##,
                left + 4.0,
                left + group - 4.0
            );
        }
        let centre = left + group / 2.0;
        let _ = writeln!(
            svg,
            r##"<text x="{centre:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{}</text>"##,
            BOTTOM + 16.0,
            xml(&scenario.short(args))
        );
        let notes = match scenario.goal() {
            Some(goal) if scenario == Scenario::Zipf => vec![
                format!("goal ≥ {goal:.2}"),
                format!("and ≤ {ZIPF_STORE_GOAL} store trips/req"),
            ],
            Some(goal) => vec![format!("goal ≥ {goal:.2}")],
            None => vec!["no goal".to_owned()],
        };
        for (line, note) in notes.iter().enumerate() {
            let _ = writeln!(
                svg,
                r##"<text x="{centre:.1}" y="{:.1}" text-anchor="middle" font-size="9.5" fill="#555">{}</text>"##,
                BOTTOM + 29.0 + 11.0 * line as f64,
                xml(note)
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}" stroke="#222"/>"##
    );
    let footnotes = [
        format!(
            "Medians of per-round ratios to the open route's req/s, {} round(s) of {} s; one worker on core {SERVICE_CORE}, wrk on core {LOAD_CORE}.",
            args.rounds, args.seconds
        ),
        format!("Dashed: the goal. Bars stop at {MAX}; the labels give the values."),
    ];
    for (line, note) in footnotes.iter().enumerate() {
        let _ = writeln!(
            svg,
            r##"<text x="10" y="{:.1}" font-size="9.5" fill="#555">{}</text>"##,
            HEIGHT - 20.0 + 12.0 * line as f64,
            xml(note)
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}
