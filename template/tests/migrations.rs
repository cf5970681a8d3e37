//! The SQLite and PostgreSQL migrations stay in step: the same migrations, creating the columns that
//! `src/store/sql/schema.rs` declares.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

type Tables = BTreeMap<String, BTreeSet<String>>;

fn migration_names(dialect: &str) -> BTreeSet<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(dialect);
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Tables and columns created by `CREATE TABLE` and `ALTER TABLE ... ADD COLUMN` in every `up.sql`.
fn migrated_tables(dialect: &str) -> Tables {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(dialect);
    let mut tables = Tables::new();
    for name in migration_names(dialect) {
        let sql = fs::read_to_string(dir.join(name).join("up.sql")).unwrap().to_lowercase();
        let mut current: Option<String> = None;
        for line in sql.lines().map(str::trim) {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["create", "table", table, ..] => {
                    current = Some(table.trim_end_matches('(').to_owned());
                }
                ["alter", "table", table, "add", "column", column, ..] => {
                    tables.entry((*table).to_owned()).or_default().insert((*column).to_owned());
                }
                [")" | ");", ..] => current = None,
                [column, ..]
                    if current.is_some()
                        && !["primary", "unique", "foreign", "constraint"].contains(column) =>
                {
                    let table = current.clone().unwrap();
                    tables.entry(table).or_default().insert((*column).to_owned());
                }
                _ => {}
            }
        }
    }
    tables
}

fn schema_tables() -> Tables {
    let schema =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/sql/schema.rs"))
            .unwrap();
    let mut tables = Tables::new();
    let mut current: Option<String> = None;
    for line in schema.lines().map(str::trim) {
        if let Some((head, _)) = line.split_once(" (").filter(|_| line.ends_with('{')) {
            current = Some(head.to_owned());
        } else if line == "}" {
            current = None;
        } else if let (Some(table), Some((column, _))) = (&current, line.split_once(" -> ")) {
            tables.entry(table.clone()).or_default().insert(column.to_owned());
        }
    }
    tables
}

#[test]
fn both_databases_have_the_same_migrations() {
    assert_eq!(migration_names("sqlite"), migration_names("postgres"));
}

#[test]
fn migrations_create_the_schema_columns() {
    let schema = schema_tables();
    assert!(schema.contains_key("api_keys"), "{schema:?}");
    assert_eq!(migrated_tables("sqlite"), schema, "migrations/sqlite");
    assert_eq!(migrated_tables("postgres"), schema, "migrations/postgres");
}
