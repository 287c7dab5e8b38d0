//! The committed JSON Schema files under `schema/json/` are exactly what the code generates.
//! After changing a wire type, run `UPDATE_SCHEMA=1 cargo test -p executor-schema --test
//! json_schema_files` and commit the result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use executor_schema::jsonschema::{file_text, generate_all};

fn json_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("json")
}

const HOW_TO_FIX: &str =
    "regenerate with `UPDATE_SCHEMA=1 cargo test -p executor-schema --test json_schema_files` and commit schema/json/";

fn committed_files() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(json_dir()) else {
        return files;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        files.insert(name, std::fs::read_to_string(&path).unwrap());
    }
    files
}

fn generated_files() -> BTreeMap<String, String> {
    generate_all()
        .into_iter()
        .map(|(name, schema)| (format!("{name}.json"), file_text(&schema)))
        .collect()
}

#[test]
fn committed_schema_files_match_the_generated_ones() {
    let generated = generated_files();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::create_dir_all(json_dir()).unwrap();
        for stale in committed_files()
            .keys()
            .filter(|n| !generated.contains_key(*n))
        {
            std::fs::remove_file(json_dir().join(stale)).unwrap();
        }
        for (name, text) in &generated {
            std::fs::write(json_dir().join(name), text).unwrap();
        }
        eprintln!(
            "UPDATE_SCHEMA set: rewrote {} files in {}",
            generated.len(),
            json_dir().display()
        );
    }
    let committed = committed_files();
    let mut problems = Vec::new();
    for (name, text) in &generated {
        match committed.get(name) {
            None => problems.push(format!("schema/json/{name} is missing")),
            Some(old) if old != text => problems.push(format!(
                "schema/json/{name} differs from the generated schema"
            )),
            Some(_) => {}
        }
    }
    for name in committed.keys().filter(|n| !generated.contains_key(*n)) {
        problems.push(format!(
            "schema/json/{name} is stale: no wire type generates it"
        ));
    }
    assert!(problems.is_empty(), "{}\n{HOW_TO_FIX}", problems.join("\n"));
}

#[test]
fn every_schema_is_draft_2020_12_with_a_title() {
    for (name, schema) in generate_all() {
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        assert!(schema["title"].is_string(), "{name} has no title");
    }
}
