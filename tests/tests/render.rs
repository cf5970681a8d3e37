//! Every placeholder combination renders into a complete project with no Liquid left, and the hooks
//! reject bad combinations with a clear message. A project generated from an older version takes
//! the newer one's changes as the upgrade page says. Cheap: nothing is compiled here.

use std::path::Path;
use std::process::Command;

use actix_api_auth_tests::{generate, generate_into, repo_root, work_dir};

const PLACEHOLDERS: &[&str] = &[
    "project-name",
    "crate_name",
    "key_prefix",
    "route_prefix",
    "docs_path",
    "database",
    "redis_cache",
    "database_url",
];

fn read(project: &Path, file: &str) -> String {
    std::fs::read_to_string(project.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn assert_no_liquid(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_no_liquid(&path);
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        assert!(
            !text.contains("{%"),
            "Liquid tag left in {}",
            path.display()
        );
        for name in PLACEHOLDERS {
            for open in ["{{", "{{ "] {
                assert!(
                    !text.contains(&format!("{open}{name}")),
                    "{{{{{name}}}}} left in {}",
                    path.display()
                );
            }
        }
        assert!(
            !path.to_string_lossy().ends_with(".liquid"),
            "{}",
            path.display()
        );
    }
}

fn file_list(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(
                    path.strip_prefix(dir)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_combination_renders() {
    let mut lists = Vec::new();
    for database in ["sqlite", "postgres", "redis"] {
        for redis_cache in ["false", "true"] {
            if database == "redis" && redis_cache == "true" {
                continue; // rejected by the pre hook: see bad_values_are_rejected_with_a_clear_message
            }
            for custom in [false, true] {
                let name = format!("render-{database}-{redis_cache}-{custom}");
                let mut defines = vec![
                    format!("database={database}"),
                    format!("redis_cache={redis_cache}"),
                ];
                if custom {
                    defines.extend([
                        "key_prefix=acme2_".into(),
                        "route_prefix=/admin/keys".into(),
                        "docs_path=/api/docs".into(),
                    ]);
                }
                let defines: Vec<&str> = defines.iter().map(String::as_str).collect();
                let project = generate(&name, &defines);
                assert_no_liquid(&project);

                let manifest = read(&project, "Cargo.toml");
                assert!(
                    manifest.contains(&format!("name = \"{name}\"")),
                    "{manifest}"
                );
                let features = if redis_cache == "true" {
                    format!("default = [\"{database}\", \"redis\"]")
                } else {
                    format!("default = [\"{database}\"]")
                };
                assert!(manifest.contains(&features), "{features} in {manifest}");
                let defaults = read(&project, "src/config/defaults.rs");
                let crate_name = name.replace('-', "_");
                let (prefix, routes, docs) = if custom {
                    ("acme2_", "/admin/keys", "/api/docs")
                } else {
                    ("sk_", "/api/v1/api-keys", "/docs")
                };
                for expected in [prefix, routes, docs] {
                    assert!(
                        defaults.contains(&format!("\"{expected}\"")),
                        "{expected} in {defaults}"
                    );
                }
                let url = match database {
                    "sqlite" => format!("sqlite://data/{crate_name}.db"),
                    "postgres" => format!("postgres://postgres@localhost/{crate_name}"),
                    _ => "redis://127.0.0.1:6379/".to_owned(),
                };
                assert!(defaults.contains(&url), "{url} in {defaults}");
                assert!(
                    read(&project, ".env.example").contains(&format!("API_KEY_PREFIX={prefix}"))
                );
                let migrations = if database == "postgres" {
                    "postgres"
                } else {
                    "sqlite"
                };
                assert!(
                    read(&project, "diesel.toml").contains(&format!("migrations/{migrations}"))
                );
                assert!(read(&project, "README.md").contains(&format!("# {name}")));

                // The committed lockfile matches the rendered manifest: builds are reproducible.
                let metadata = Command::new(env!("CARGO"))
                    .args(["metadata", "--locked", "--no-deps", "--format-version", "1"])
                    .current_dir(&project)
                    .output()
                    .unwrap();
                assert!(
                    metadata.status.success(),
                    "{}",
                    String::from_utf8_lossy(&metadata.stderr)
                );

                lists.push(file_list(&project));
            }
        }
    }
    for list in &lists {
        assert_eq!(list, &lists[0], "every combination produces the same files");
    }
    for expected in [
        "Cargo.lock",
        ".gitignore",
        "macros/Cargo.toml",
        "migrations/sqlite",
        "migrations/postgres",
    ] {
        assert!(
            lists[0].iter().any(|f| f.starts_with(expected)),
            "{expected} is generated"
        );
    }
    assert!(
        !lists[0]
            .iter()
            .any(|f| f.contains("hooks") || f.ends_with(".rhai")),
        "hooks stay out of the project"
    );
}

fn generate_failure(name: &str, defines: &[&str]) -> String {
    let destination = work_dir().join("rejected");
    let _ = std::fs::remove_dir_all(&destination);
    let output = generate_into(&destination, name, defines);
    assert!(!output.status.success(), "{defines:?} should be rejected");
    // cargo-generate may leave the empty destination folder behind, but nothing in it.
    assert!(
        !destination.join(name).join("Cargo.toml").exists(),
        "nothing is generated for {defines:?}"
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn bad_values_are_rejected_with_a_clear_message() {
    for (defines, expected) in [
        (&["key_prefix=Acme_"][..], "key_prefix"),
        (&["key_prefix=acme"][..], "key_prefix"),
        (&["route_prefix=keys"][..], "route_prefix"),
        (&["docs_path=/docs/"][..], "docs_path"),
        (&["database=mysql"][..], "database"),
        (
            &["database=redis", "redis_cache=true"][..],
            "keys are in Redis already",
        ),
        (&["route_prefix=/docs", "docs_path=/docs"][..], "overlap"),
        (
            &["route_prefix=/api", "docs_path=/docs"][..],
            "clashes with the service's route /api/data",
        ),
        (
            &["docs_path=/health"][..],
            "clashes with the service's route /health",
        ),
        (
            &["route_prefix=/metrics"][..],
            "clashes with the service's route /metrics",
        ),
    ] {
        let output = generate_failure("rejected-svc", defines);
        assert!(
            output.contains(expected),
            "{defines:?}: expected {expected:?} in:\n{output}"
        );
    }
}

#[test]
fn the_post_hook_prints_next_steps() {
    let destination = work_dir().join("post-hook");
    let _ = std::fs::remove_dir_all(&destination);
    let output = generate_into(&destination, "next-steps", &["docs_path=/swagger"]);
    // cargo-generate prints hook output on stderr.
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{printed}");
    for line in [
        "cd next-steps",
        "cargo run -- keys create --name admin --admin",
        "http://127.0.0.1:8080/swagger/",
    ] {
        assert!(printed.contains(line), "{line:?} in:\n{printed}");
    }
    assert!(
        !printed.contains("createdb"),
        "SQLite needs no server:\n{printed}"
    );

    // PostgreSQL needs a server and a database: the hook names the URL the project defaults to.
    let output = generate_into(
        &destination,
        "pg-steps",
        &["database=postgres", "redis_cache=true"],
    );
    let printed = String::from_utf8_lossy(&output.stderr);
    let defaults = read(&destination.join("pg-steps"), "src/config/defaults.rs");
    for line in [
        "# Keys live in PostgreSQL at postgres://postgres@localhost/pg_steps (DATABASE_URL):",
        "createdb -h localhost -U postgres pg_steps",
        "# The Redis cache is used once REDIS_URL is set",
    ] {
        assert!(printed.contains(line), "{line:?} in:\n{printed}");
    }
    assert!(
        defaults.contains("\"postgres://postgres@localhost/pg_steps\""),
        "{defaults}"
    );
    let output = generate_into(&destination, "redis-steps", &["database=redis"]);
    let printed = String::from_utf8_lossy(&output.stderr);
    assert!(
        printed.contains("# Keys live in Redis at redis://127.0.0.1:6379/ (DATABASE_URL): start redis-server first."),
        "{printed}"
    );
}

/// The files cargo-generate renders (`include` in cargo-generate.toml) use `{{`, `{%` and `{#`
/// for placeholders only: any other use would be eaten by Liquid, silently.
#[test]
fn rendered_files_use_braces_for_placeholders_only() {
    let root = actix_api_auth_tests::repo_root();
    let manifest = std::fs::read_to_string(root.join("cargo-generate.toml")).unwrap();
    let list = manifest
        .split_once("include = [")
        .and_then(|(_, rest)| rest.split_once(']'))
        .unwrap()
        .0;
    let patterns: Vec<&str> = list
        .lines()
        .filter_map(|line| line.trim().strip_prefix('"')?.strip_suffix("\","))
        .collect();
    assert!(patterns.len() > 10, "{patterns:?}");
    let placeholder = regex::Regex::new(r"\{\{\s*([a-z_-]+)\s*\}\}").unwrap();
    let tag = regex::Regex::new(r"\{%-?\s*(if|endif|else)\b[^%]*%\}").unwrap();
    for pattern in patterns {
        let files: Vec<_> = match pattern.split_once('*') {
            Some((dir, ext)) => std::fs::read_dir(root.join("template").join(dir))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.to_string_lossy().ends_with(ext))
                .collect(),
            None => vec![root.join("template").join(pattern)],
        };
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let rest = tag.replace_all(&text, "");
            for found in placeholder.captures_iter(&rest) {
                assert!(
                    PLACEHOLDERS.contains(&&found[1]),
                    "{} uses {{{{{}}}}}, which is no placeholder",
                    file.display(),
                    &found[1]
                );
            }
            let rest = placeholder.replace_all(&rest, "");
            for open in ["{{", "{%", "{#"] {
                assert!(
                    !rest.contains(open),
                    "{} contains {open} outside a placeholder",
                    file.display()
                );
            }
        }
    }
}

/// This repository under another name beside it, until dropped (also when a test fails); nothing
/// when that name is taken already.
struct Named(Option<std::path::PathBuf>);

impl Named {
    fn beside_the_repository(name: &str) -> Self {
        let link = repo_root().parent().unwrap().join(name);
        if link.exists() {
            return Self(None);
        }
        std::os::unix::fs::symlink(repo_root(), &link).unwrap();
        Self(Some(link))
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        if let Some(link) = &self.0 {
            let _ = std::fs::remove_file(link);
        }
    }
}

/// The `sh` blocks of a page, in order.
fn sh_blocks(page: &str) -> Vec<String> {
    page.split("```sh\n")
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap().to_owned())
        .collect()
}

/// The upgrade page's steps, run as written between version 0.3.0 (the commit CHANGELOG.md names)
/// and this checkout: the owner's project, generated from the old version and edited since, takes
/// the template's changes with no rejected hunk, keeps the edit, and otherwise becomes what the new
/// version generates.
#[test]
fn a_project_upgrades_between_two_versions_as_the_page_says() {
    let changelog = std::fs::read_to_string(repo_root().join("CHANGELOG.md")).unwrap();
    let old = changelog
        .lines()
        .find_map(|line| line.strip_prefix("## 0.3.0 — commit "))
        .expect("CHANGELOG.md names the commit of 0.3.0");
    let page = std::fs::read_to_string(repo_root().join("docs/src/upgrading.md")).unwrap();
    let blocks = sh_blocks(&page);
    let (generate_both, apply) = (&blocks[0], &blocks[1]);
    assert!(generate_both.contains(&format!("git worktree add /tmp/template-old {old}")));

    let work = work_dir().join("upgrade");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(repo_root())
            .output()
            .unwrap()
    };
    git(&["worktree", "prune"]);
    assert!(
        git(&["cat-file", "-e", &format!("{old}^{{commit}}")])
            .status
            .success(),
        "this clone lacks commit {old} of CHANGELOG.md (a shallow clone? `git fetch --unshallow`)"
    );
    // The page's commands, in folders of the test's own instead of /tmp and ~/src, and without
    // `git pull`: this checkout is the newest version.
    let bin = std::env::current_exe().unwrap();
    let cargo_generate = bin.parent().unwrap().parent().unwrap();
    // `git diff --no-index` exits 1 when the trees differ, as they do: the second block runs as a
    // shell reading it line by line would, without `-e`; its last command decides.
    let run = |script: &str, options: &str| {
        let script = script
            .replace("cd actix-api-auth && git pull", "cd actix-api-auth")
            .replace("~/src/my-service", "/tmp/project")
            .replace("/tmp/", &format!("{}/", work.display()))
            .replace("/tmp ", &format!("{} ", work.display()));
        let out = Command::new("bash")
            .args([options, &script])
            .current_dir(repo_root().parent().unwrap())
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    cargo_generate.display(),
                    std::env::var("PATH").unwrap()
                ),
            )
            .env("USER", "template-tests")
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{script}\n{printed}");
    };
    // The clone is named as the page names it, for as long as the page's commands need it.
    let clone = Named::beside_the_repository("actix-api-auth");
    run(generate_both, "-ec");
    drop(clone);

    // The owner's project: the old version, with a route of their own.
    let project = work.join("project");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(work.join("old/my-service"))
        .arg(&project)
        .status()
        .unwrap();
    assert!(copied.success());
    // Its own repository, as an owner's project is: `git apply` takes paths from the repository's
    // top.
    let init = Command::new("git")
        .args(["init", "-q"])
        .current_dir(&project)
        .status()
        .unwrap();
    assert!(init.success());
    let own = "\n/// The owner's own route.\n#[get(\"/mine\")]\n#[require_api_key]\npub async fn mine() -> HttpResponse {\n    HttpResponse::Ok().finish()\n}\n";
    let routes = project.join("src/routes.rs");
    let edited = std::fs::read_to_string(&routes).unwrap() + own;
    std::fs::write(&routes, &edited).unwrap();

    run(
        &apply.replace(
            "git apply -p3 --reject /tmp/template.patch",
            "git apply -p3 --reject /tmp/template.patch && test -z \"$(find . -name '*.rej')\"",
        ),
        "-c",
    );
    let new = work.join("new/my-service");
    let new_routes = std::fs::read_to_string(new.join("src/routes.rs")).unwrap();
    assert_eq!(
        std::fs::read_to_string(&routes).unwrap(),
        new_routes + own,
        "the template's changes and the owner's route"
    );
    for file in ["Cargo.toml", "Cargo.lock", "src/store/mod.rs", "src/cli.rs"] {
        assert_eq!(read(&project, file), read(&new, file), "{file}");
    }
    let manifest = read(&project, "Cargo.toml");
    assert!(
        manifest.contains("[workspace.metadata.template]"),
        "the version is recorded now"
    );
}
