//! The generated `Dockerfile` and `compose.yaml`, checked without a container engine (none runs on
//! the CI machines): parsed, and held to what the service needs to run in them.

use std::collections::BTreeMap;
use std::path::Path;

use actix_api_auth_tests::generate;
use yaml_rust2::{Yaml, YamlLoader};

/// A Dockerfile's instructions, continuation lines joined: (keyword, arguments).
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    joined
        .into_iter()
        .map(|instruction| {
            let (keyword, arguments) = instruction.split_once(' ').unwrap_or((&instruction, ""));
            (keyword.to_uppercase(), arguments.trim().to_owned())
        })
        .collect()
}

fn package_name(project: &Path) -> String {
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
    let line = manifest
        .lines()
        .find(|line| line.starts_with("name = "))
        .unwrap();
    line.trim_start_matches("name = ")
        .trim_matches('"')
        .to_owned()
}

#[test]
fn dockerfile_builds_in_one_stage_and_runs_unprivileged_in_another() {
    let project = generate("boxed-svc", &["database=sqlite"]);
    let name = package_name(&project);
    assert_eq!(name, "boxed-svc");
    let dockerfile = std::fs::read_to_string(project.join("Dockerfile")).unwrap();
    let steps = instructions(&dockerfile);
    let known = [
        "FROM",
        "ARG",
        "WORKDIR",
        "COPY",
        "RUN",
        "USER",
        "ENV",
        "EXPOSE",
        "ENTRYPOINT",
        "CMD",
    ];
    for (keyword, _) in &steps {
        assert!(
            known.contains(&keyword.as_str()),
            "unknown instruction {keyword}"
        );
    }
    let stages: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, (keyword, _))| keyword == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = (&steps[stages[0]..stages[1]], &steps[stages[1]..]);

    let base = &build[0].1;
    assert!(
        base.starts_with("rust:1.95") && base.ends_with(" AS build"),
        "{base}"
    );
    let cargo = build
        .iter()
        .find(|(keyword, args)| keyword == "RUN" && args.contains("cargo build"))
        .expect("the build stage runs cargo build");
    for flag in ["--release", "--locked", &format!("--bin {name}")] {
        assert!(cargo.1.contains(flag), "{flag} in {}", cargo.1);
    }

    assert!(runtime[0].1.starts_with("debian:"), "{}", runtime[0].1);
    let copied = runtime
        .iter()
        .find(|(keyword, args)| keyword == "COPY" && args.starts_with("--from=build"))
        .expect("the runtime stage takes the binary from the build");
    let binary = format!("/usr/local/bin/{name}");
    assert!(copied.1.ends_with(&binary), "{}", copied.1);
    let user = runtime
        .iter()
        .rev()
        .find(|(keyword, _)| keyword == "USER")
        .expect("a USER");
    assert!(
        !["root", "0"].contains(&user.1.as_str()),
        "runs as {}",
        user.1
    );
    let env: String = runtime
        .iter()
        .filter(|(keyword, _)| keyword == "ENV")
        .map(|(_, args)| args.as_str())
        .collect();
    assert!(
        env.contains("HOST=0.0.0.0"),
        "listens beyond the container: {env}"
    );
    assert!(env.contains("PORT=8080"));
    assert!(runtime.contains(&("EXPOSE".to_owned(), "8080".to_owned())));
    let entrypoint = runtime
        .iter()
        .find(|(keyword, _)| keyword == "ENTRYPOINT")
        .unwrap();
    let entrypoint: Vec<String> = serde_json::from_str(&entrypoint.1).expect("exec form");
    assert_eq!(entrypoint, [binary]);

    let ignored = std::fs::read_to_string(project.join(".dockerignore")).unwrap();
    assert!(
        ignored.lines().any(|line| line == "target"),
        "the build context leaves target/ out"
    );
}

fn map<'y>(yaml: &'y Yaml, key: &str) -> &'y Yaml {
    let value = &yaml[key];
    assert!(!value.is_badvalue(), "{key} is missing");
    value
}

fn text<'y>(yaml: &'y Yaml, key: &str) -> &'y str {
    map(yaml, key)
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string"))
}

#[test]
fn compose_runs_the_service_on_postgres_and_redis() {
    let project = generate("composed-svc", &["database=sqlite"]);
    let yaml = std::fs::read_to_string(project.join("compose.yaml")).unwrap();
    let documents = YamlLoader::load_from_str(&yaml).expect("compose.yaml is YAML");
    let compose = &documents[0];
    let services = map(compose, "services");
    let names: Vec<&str> = services
        .as_hash()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "postgres", "redis"]);

    let api = map(services, "api");
    let build = map(api, "build");
    assert_eq!(text(build, "context"), ".");
    let features = text(map(build, "args"), "FEATURES");
    assert!(
        features.contains("postgres") && features.contains("redis"),
        "the image is built with what compose runs it on, whatever the generated default: {features}"
    );
    let env = map(api, "environment");
    let database = text(env, "DATABASE_URL");
    assert!(
        database.starts_with("postgres://") && database.contains("@postgres:5432/composed_svc"),
        "{database}"
    );
    let postgres = map(services, "postgres");
    assert_eq!(
        text(map(postgres, "environment"), "POSTGRES_DB"),
        "composed_svc"
    );
    // No password is written down: compose refuses to start until both are given.
    let password = text(map(postgres, "environment"), "POSTGRES_PASSWORD");
    assert_eq!(password, "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}");
    assert!(database.contains(&format!(":{password}@")), "{database}");
    let redis = map(services, "redis");
    let redis_password = text(map(redis, "environment"), "REDISCLI_AUTH");
    assert_eq!(redis_password, "${REDIS_PASSWORD:?set REDIS_PASSWORD}");
    assert_eq!(
        text(env, "REDIS_URL"),
        format!("redis://:{redis_password}@redis:6379/")
    );
    let command: Vec<&str> = map(redis, "command")
        .as_vec()
        .unwrap()
        .iter()
        .map(|part| part.as_str().unwrap())
        .collect();
    // Redis asks for the password, which it reads from a file rather than its command line.
    let script = command.concat();
    assert!(
        script.contains("requirepass %s") && script.contains("\"$$REDISCLI_AUTH\""),
        "{command:?}"
    );
    assert!(!script.contains("--requirepass"), "{command:?}");
    assert!(text(postgres, "image").starts_with("postgres:15"));
    assert!(text(map(services, "redis"), "image").starts_with("redis:"));

    let waits: BTreeMap<&str, &str> = map(api, "depends_on")
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap(), text(v, "condition")))
        .collect();
    assert_eq!(
        waits,
        BTreeMap::from([
            ("postgres", "service_healthy"),
            ("redis", "service_healthy")
        ])
    );
    for dependency in ["postgres", "redis"] {
        let test = map(map(map(services, dependency), "healthcheck"), "test");
        assert!(
            !test.as_vec().unwrap().is_empty(),
            "{dependency} has a healthcheck"
        );
    }
    let ports = map(api, "ports").as_vec().unwrap();
    assert_eq!(ports[0].as_str(), Some("8080:8080"));
    let volume = map(postgres, "volumes").as_vec().unwrap()[0]
        .as_str()
        .unwrap();
    let named = volume.split(':').next().unwrap();
    assert!(
        !map(compose, "volumes")[named].is_badvalue(),
        "{named} is declared"
    );
}
