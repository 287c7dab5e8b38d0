//! The committed `schema/json/*.json` must be exactly what the types generate.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

const HOW_TO_FIX: &str =
    "run `UPDATE_SCHEMA=1 cargo test -p executor-schema --test json_schema_files` and commit schema/json/";

fn render(value: &serde_json::Value) -> String {
    let mut text = serde_json::to_string_pretty(value).unwrap();
    text.push('\n');
    text
}

#[test]
fn committed_json_schemas_match_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
    let generated = executor_schema::jsonschema::generate_all();
    let update = std::env::var_os("UPDATE_SCHEMA").is_some_and(|v| v == "1");

    let wanted: BTreeSet<String> = generated.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        wanted.len(),
        generated.len(),
        "two types share a schema file name"
    );

    if update {
        fs::create_dir_all(&dir).unwrap();
    }
    let mut stale = Vec::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !wanted.contains(&name) {
            if update {
                fs::remove_file(dir.join(&name)).unwrap();
            } else {
                stale.push(name);
            }
        }
    }

    let mut differing = Vec::new();
    for (name, schema) in &generated {
        let path = dir.join(name);
        let text = render(schema);
        if update {
            fs::write(&path, &text).unwrap();
        } else if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            differing.push(name.clone());
        }
    }
    assert!(
        stale.is_empty() && differing.is_empty(),
        "schema/json is out of date (missing or different: {differing:?}; stale extra files: {stale:?}); {HOW_TO_FIX}"
    );
}

#[test]
fn schemas_describe_the_encoded_keys() {
    let all = executor_schema::jsonschema::generate_all();
    let find = |name: &str| {
        all.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let result = find("RunCommandResult.json");
    let props = result["properties"].as_object().unwrap();
    assert!(props.contains_key("stderr"));
    assert!(props.contains_key("ExitCode"));
    assert!(!props.contains_key("exit_code"));
    let req = find("RunCommandRequest.json");
    let volume = &req["$defs"]["StorageVolume"]["properties"];
    assert!(volume.get("readOnly").is_some(), "{volume}");
    assert_eq!(
        req["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
}

#[test]
fn every_schema_is_draft_2020_12_with_its_type_as_title() {
    for (name, schema) in executor_schema::jsonschema::generate_all() {
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        assert_eq!(
            schema["title"].as_str().map(|t| format!("{t}.json")),
            Some(name.clone()),
            "{name}: the file is named for the type"
        );
    }
}
