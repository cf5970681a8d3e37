//! The documentation site (`docs/`, an mdBook) stays true: it builds without a warning, every
//! setting and placeholder the code has is documented (and nothing else), and every Rust example
//! either compiles in a generated project or is marked as illustrative (`rust,ignore`). The lists
//! the pages copy from the template (reserved routes, rendered files) match it, every file they name
//! exists, and the changelog's newest version is the one a generated project records.
//!
//! The book is built with mdBook 0.5.4, installed with cargo under the work directory on first use.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use actix_api_auth_tests::{cargo, generate, repo_root, tools};
use regex::Regex;

fn docs() -> PathBuf {
    repo_root().join("docs")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Every page of the book, with its file name.
fn pages() -> Vec<(String, String)> {
    let mut pages: Vec<_> = std::fs::read_dir(docs().join("src"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, read(&path))
        })
        .collect();
    pages.sort();
    pages
}

#[test]
fn the_book_builds_without_warnings() {
    let output = Command::new(tools::cargo_tool("mdbook", "0.5.4", "mdbook"))
        .args(["build", "--dest-dir"])
        .arg(actix_api_auth_tests::work_dir().join("book"))
        .current_dir(docs())
        .output()
        .expect("mdbook runs");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    let complaints: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .collect();
    assert!(complaints.is_empty(), "{log}");

    // Every page is in the table of contents, and every link between pages reaches one.
    let summary = read(&docs().join("src").join("SUMMARY.md"));
    let link = Regex::new(r"\]\(([a-z0-9-]+\.md)(#[a-z0-9-]+)?\)").unwrap();
    let names: BTreeSet<String> = pages().into_iter().map(|(name, _)| name).collect();
    for name in names.iter().filter(|name| *name != "SUMMARY.md") {
        assert!(
            summary.contains(&format!("({name})")),
            "{name} is not in SUMMARY.md"
        );
    }
    for (name, text) in pages() {
        for target in link.captures_iter(&text) {
            assert!(
                names.contains(&target[1]),
                "{name} links to a missing page {}",
                &target[1]
            );
        }
    }
}

/// `FOO_BAR` for every field `foo_bar` of `Config`.
fn settings_in_code() -> BTreeSet<String> {
    let code = read(&repo_root().join("template/src/config/mod.rs"));
    let body = code
        .split_once("pub struct Config {")
        .and_then(|(_, rest)| rest.split_once("\n}"))
        .expect("the Config struct")
        .0;
    let field = Regex::new(r"(?m)^    pub ([a-z0-9_]+):").unwrap();
    field
        .captures_iter(body)
        .map(|c| c[1].to_uppercase())
        .collect()
}

#[test]
fn every_setting_is_documented_and_every_documented_setting_exists() {
    let mut code = settings_in_code();
    assert!(
        code.contains("DATABASE_URL") && code.contains("LOG_FORMAT"),
        "{code:?}"
    );
    // Read by tracing-subscriber rather than by Config.
    code.insert("RUST_LOG".into());

    let page = read(&docs().join("src/configuration.md"));
    assert_eq!(
        table_variables(&page),
        code,
        "docs/src/configuration.md against Config"
    );

    let readme = read(&repo_root().join("template/README.md"));
    let table = readme
        .split_once("## Configuration")
        .expect("the generated README has a Configuration section")
        .1;
    assert_eq!(
        table_variables(table),
        code,
        "template/README.md against Config"
    );

    let example = read(&repo_root().join("template/.env.example"));
    let line = Regex::new(r"(?m)^#? ?([A-Z][A-Z0-9_]+)=").unwrap();
    let listed: BTreeSet<String> = line
        .captures_iter(&example)
        .map(|c| c[1].to_owned())
        .collect();
    assert_eq!(listed, code, "template/.env.example against Config");
}

/// The `UPPER_CASE` names in the first column of the Markdown tables in `text`.
fn table_variables(text: &str) -> BTreeSet<String> {
    let row = Regex::new(r"(?m)^\| ([^|]+) \|").unwrap();
    let variable = Regex::new(r"`([A-Z][A-Z0-9_]+)`").unwrap();
    row.captures_iter(text)
        .flat_map(|c| {
            variable
                .captures_iter(&c[1])
                .map(|v| v[1].to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_placeholder_is_documented() {
    let manifest = read(&repo_root().join("cargo-generate.toml"));
    let table = Regex::new(r"(?m)^\[placeholders\.([a-z_]+)\]").unwrap();
    let mut placeholders: BTreeSet<String> = table
        .captures_iter(&manifest)
        .map(|c| c[1].to_owned())
        .collect();
    placeholders.insert("project-name".into());
    let page = read(&docs().join("src/placeholders.md"));
    let row = Regex::new(r"(?m)^\| `([a-z_-]+)` \|").unwrap();
    let documented: BTreeSet<String> = row.captures_iter(&page).map(|c| c[1].to_owned()).collect();
    assert_eq!(documented, placeholders);
}

/// The Rust code blocks of a page: (info string, code).
fn rust_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let fence = line.trim_start();
        let Some(info) = fence.strip_prefix("```rust") else {
            continue;
        };
        let indent = line.len() - fence.len();
        let code: Vec<&str> = lines
            .by_ref()
            .take_while(|l| l.trim_start() != "```")
            .map(|l| l.get(indent..).unwrap_or(l.trim_start()))
            .collect();
        blocks.push((info.to_owned(), code.join("\n")));
    }
    blocks
}

#[test]
fn rust_examples_compile_or_say_they_are_illustrative() {
    let (mut compiled, mut tests) = (Vec::new(), Vec::new());
    for (page, text) in pages() {
        for (n, (info, code)) in rust_blocks(&text).into_iter().enumerate() {
            let module = format!("{}_{n}", page.trim_end_matches(".md").replace('-', "_"));
            match info.as_str() {
                ",ignore" => {}
                "" => compiled.push((module, code)),
                // A test file of the project's own: the crate is called `my_service` on the pages.
                ",test" => tests.push((module, code.replace("my_service::", "docs_svc::"))),
                other => panic!(
                    "{page}: a rust block is ```rust (compiled), ```rust,test (a test file, run) or ```rust,ignore (illustrative), not ```rust{other}"
                ),
            }
        }
    }
    assert!(!compiled.is_empty(), "some examples are compiled");

    // Each example becomes a module of a generated service; lines hidden in the book (`# `) are kept.
    // The generated README's examples are compiled too.
    let project = generate("docs-svc", &[]);
    for (n, (info, code)) in rust_blocks(&read(&project.join("README.md")))
        .into_iter()
        .enumerate()
    {
        match info.as_str() {
            "" => compiled.push((format!("readme_{n}"), code)),
            ",test" => tests.push((format!("readme_{n}"), code)),
            other => {
                panic!("the generated README's rust blocks are compiled or run, not ```rust{other}")
            }
        }
    }
    let mut lib = read(&project.join("src/lib.rs"));
    for (module, code) in &compiled {
        let source: Vec<&str> = code
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(hidden) => hidden,
                None if line == "#" => "",
                None => line,
            })
            .collect();
        std::fs::write(
            project.join("src").join(format!("doc_{module}.rs")),
            source.join("\n") + "\n",
        )
        .unwrap();
        lib.push_str(&format!("#[allow(dead_code)]\nmod doc_{module};\n"));
    }
    std::fs::write(project.join("src/lib.rs"), lib).unwrap();
    cargo(&project, &["build", "--locked", "--lib"]);
    assert!(
        tests.len() >= 2,
        "the testing page and the README show a test"
    );
    let mut args = vec!["test".to_owned(), "--locked".to_owned()];
    for (module, code) in &tests {
        std::fs::write(project.join("tests").join(format!("doc_{module}.rs")), code).unwrap();
        args.extend(["--test".to_owned(), format!("doc_{module}")]);
    }
    let ran = cargo(
        &project,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    println!("{ran}");
    println!(
        "compiled {} examples: {:?}",
        compiled.len(),
        compiled.iter().map(|(m, _)| m).collect::<Vec<_>>()
    );
}

/// The backticked items of the text from `lead` to `end`.
fn listed_after(text: &str, lead: &str, end: &str) -> BTreeSet<String> {
    let start = text
        .find(lead)
        .unwrap_or_else(|| panic!("{lead:?} is on the page"));
    let sentence = &text[start..];
    let sentence = &sentence[..sentence.find(end).unwrap_or(sentence.len())];
    let item = Regex::new(r"`([^`]+)`").unwrap();
    item.captures_iter(sentence)
        .map(|c| c[1].to_owned())
        .collect()
}

#[test]
fn lists_copied_from_the_template_match_it() {
    let placeholders = read(&docs().join("src/placeholders.md"));
    let hook = read(&repo_root().join("hooks/pre.rhai"));
    let reserved = Regex::new(r#"for reserved in \[([^\]]*)\]"#).unwrap();
    let routes: BTreeSet<String> = reserved.captures(&hook).expect("the hook lists its routes")[1]
        .split(',')
        .map(|route| route.trim().trim_matches('"').to_owned())
        .collect();
    let documented = listed_after(
        &placeholders,
        "either one overlapping a route of the service",
        ")",
    );
    assert_eq!(
        documented, routes,
        "placeholders.md names the routes hooks/pre.rhai reserves"
    );

    let manifest = read(&repo_root().join("cargo-generate.toml"));
    let include = &manifest[manifest.find("include = [").unwrap()..];
    let include = &include[..include.find(']').unwrap()];
    let rendered: BTreeSet<String> = Regex::new(r#""([^"]+)""#)
        .unwrap()
        .captures_iter(include)
        .map(|c| c[1].to_owned())
        .collect();
    let documented = listed_after(&placeholders, "placeholders: ", ". ");
    assert_eq!(
        documented, rendered,
        "placeholders.md names the files cargo-generate renders"
    );
}

#[test]
fn files_the_pages_name_exist() {
    // The reader's own files, which the pages ask them to create.
    let yours = ["src/reports.rs", "tests/data.rs", "tests/users.rs"];
    let path = Regex::new(
        r"`((?:src|tests|deploy|migrations|macros|hooks|docs|template|\.ci)/[A-Za-z0-9_./-]+\.[a-z]+)`",
    )
    .unwrap();
    let template = repo_root().join("template");
    let mut missing = Vec::new();
    let readmes = [
        ("README.md".to_owned(), read(&repo_root().join("README.md"))),
        (
            "template/README.md".to_owned(),
            read(&template.join("README.md")),
        ),
    ];
    for (page, text) in pages().into_iter().chain(readmes) {
        for named in path.captures_iter(&text).map(|c| c[1].to_owned()) {
            let found = [repo_root(), template.clone(), docs().join("src")]
                .iter()
                .any(|root| root.join(&named).exists());
            // What a run writes (under tests/target) is not in a clean clone.
            let output = named.starts_with("tests/target/");
            if !found && !output && !yours.contains(&named.as_str()) {
                missing.push(format!("{page}: {named}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files named but not in the repository or the template: {missing:#?}"
    );
}

#[test]
fn the_changelog_names_the_version_projects_record() {
    let changelog = read(&repo_root().join("CHANGELOG.md"));
    let newest = Regex::new(r"(?m)^## (\d+\.\d+\.\d+)")
        .unwrap()
        .captures(&changelog)
        .unwrap()[1]
        .to_owned();
    let manifest = read(&repo_root().join("template/Cargo.toml"));
    assert!(
        manifest.contains(&format!(
            "[workspace.metadata.template]\nname = \"actix-api-auth\"\nversion = \"{newest}\""
        )),
        "template/Cargo.toml records version {newest}, the changelog's newest"
    );
    // Every older version names the commit to generate it from.
    let versions = Regex::new(r"(?m)^## .*$").unwrap();
    let commit = Regex::new(r"^## \d+\.\d+\.\d+ — commit [0-9a-f]{7,40}$").unwrap();
    for older in versions.find_iter(&changelog).skip(1) {
        assert!(commit.is_match(older.as_str()), "{}", older.as_str());
    }
}
