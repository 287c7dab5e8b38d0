use super::*;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// `name.wat` compiled to `dir/name.wasm`.
fn module(dir: &Path, name: &str) -> PathBuf {
    let wasm = wat::parse_file(testdata(&format!("{name}.wat"))).unwrap();
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wasm).unwrap();
    path
}

fn config(dir: &Path, name: &str) -> RunConfig {
    RunConfig {
        entry: ModuleRef {
            spec_name: name.into(),
            path: module(dir, name),
            ..ModuleRef::default()
        },
        entrypoint: "_start".into(),
        args: vec![String::new()],
        ..RunConfig::default()
    }
}

#[test]
fn returning_is_success_and_proc_exit_is_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(run(&config(dir.path(), "hello")).exit_code, 0);
    let out = run(&config(dir.path(), "exit7"));
    assert_eq!((out.exit_code, out.error), (7, None));
}

#[test]
fn a_trap_is_exit_code_1_with_the_trap_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&config(dir.path(), "trap"));
    assert_eq!(out.exit_code, 1);
    let msg = out.error.unwrap();
    assert!(msg.starts_with("wasm trap: "), "{msg}");
    assert!(msg.contains("unreachable"), "{msg}");
}

#[test]
fn an_unknown_entrypoint_gets_bacalhaus_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "hello");
    c.entrypoint = "nope".into();
    let out = run(&c);
    assert_eq!(
        out.error.as_deref(),
        Some("unable to find the entrypoint 'nope' in the WASM module")
    );
    assert_eq!(out.exit_code, 1);
}

#[test]
fn memory_growth_past_the_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "grow");
    c.memory = Some(16 << 20);
    assert_eq!(run(&c).exit_code, 3);
    c.memory = Some(256 << 20);
    assert_eq!(run(&c).exit_code, 0);
    c.memory = None;
    assert_eq!(run(&c).exit_code, 0);
}

#[test]
fn import_modules_are_linked_by_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "uselib");
    let lib = module(dir.path(), "lib");
    c.imports.push(ModuleRef {
        spec_name: "lib.wasm".into(),
        path: lib.clone(),
        ..ModuleRef::default()
    });
    assert_eq!(
        run(&c),
        Outcome {
            exit_code: 7,
            error: None
        }
    );
    // Without it the entry module does not link.
    c.imports.clear();
    let out = run(&c);
    assert_eq!(out.exit_code, 1);
    let msg = out.error.unwrap();
    assert!(
        msg.starts_with("failed to load entry module uselib: "),
        "{msg}"
    );
    // A file name without a name section is the link name too.
    let module = Module::new(&engine().unwrap(), wat::parse_str("(module)").unwrap()).unwrap();
    assert_eq!(link_name(&module, Path::new("/in/other.wasm")), "other");
}

#[test]
fn inputs_are_read_only_and_outputs_writable() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    let output = dir.path().join("out");
    std::fs::create_dir_all(&input).unwrap();
    std::fs::create_dir_all(&output).unwrap();
    std::fs::write(input.join("data.txt"), b"some input\n").unwrap();
    let mut c = config(dir.path(), "copy");
    c.preopens = vec![
        Preopen {
            path: input.clone(),
            read_only: true,
        },
        Preopen {
            path: output.clone(),
            read_only: false,
        },
    ];
    assert_eq!(
        run(&c),
        Outcome {
            exit_code: 0,
            error: None
        }
    );
    assert_eq!(
        std::fs::read(output.join("copy.txt")).unwrap(),
        b"some input\n"
    );
    assert!(!input.join("evil.txt").exists());
}

#[test]
fn an_artifact_is_loaded_only_with_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "exit7");
    let wasm = std::fs::read(&c.entry.path).unwrap();
    let artifact = engine().unwrap().precompile_module(&wasm).unwrap();
    let path = dir.path().join("exit7.cwasm");
    std::fs::write(&path, &artifact).unwrap();
    // The .wasm is not read when there is an artifact.
    std::fs::remove_file(&c.entry.path).unwrap();
    c.entry.artifact = Some(path.clone());
    c.entry.artifact_sha256 = Some(hex(&Sha256::digest(&artifact)));
    assert_eq!(run(&c).exit_code, 7);
    c.entry.artifact_sha256 = Some("0".repeat(64));
    let msg = run(&c).error.unwrap();
    assert!(msg.contains("is not the one the plugin made"), "{msg}");
}

#[test]
fn the_status_file_gets_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), "trap");
    let status = dir.path().join("status");
    std::fs::write(&status, b"").unwrap();
    c.status = Some(status.clone());
    let arg = serde_json::to_string(&c).unwrap();
    let code = main_from_args(vec!["x".into(), RUN_ARG.into(), arg.into()]);
    assert_eq!(code, 1);
    let text = std::fs::read_to_string(&status).unwrap();
    assert!(text.starts_with("wasm trap: "), "{text}");
}
