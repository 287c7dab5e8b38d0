//! Bid strategies of the native engine: can this host run the job at all (semantic), and does
//! it fit now (resources).

use std::path::{Path, PathBuf};

use executor_schema::native::{NativeEngineSpec, ENGINE_NATIVE};
use executor_schema::{
    BidStrategyRequest, BidStrategyResponse, Capabilities, Network, Resources, SpecConfig, Task,
};

use crate::engine::NATIVE_PLUGIN_NAME as PLUGIN_NAME;
use crate::monitor::spawn::{resolve_program, DEFAULT_PATH};
use crate::sandbox::allowlist::{is_local_type, AllowList};

/// The request's task and its engine spec, when that engine is `engine` (served by `plugin`);
/// otherwise the decline every engine's bid answers with.
pub fn task_engine<'a>(
    request: &'a BidStrategyRequest,
    engine: &str,
    plugin: &str,
) -> Result<(&'a Task, &'a SpecConfig), BidStrategyResponse> {
    let Some(task) = request.job.task() else {
        return Err(BidStrategyResponse::new(false, "run jobs without a task"));
    };
    let Some(spec) = &task.engine else {
        return Err(BidStrategyResponse::new(
            false,
            "run tasks without an engine spec",
        ));
    };
    if !spec.is_type(engine) {
        return Err(BidStrategyResponse::new(
            false,
            format!("support engine {:?} in {plugin}", spec.spec_type),
        ));
    }
    Ok((task, spec))
}

/// Semantic bid: the engine spec decodes and validates, the program is installed, and the
/// network, inputs, outputs and limits can be honoured on this host. `allow_listed` is
/// `PluginConfig.allowListedLocalPaths` (see [`crate::sandbox::allowlist`]).
pub fn semantic(
    request: &BidStrategyRequest,
    caps: &Capabilities,
    allow_listed: &[PathBuf],
) -> BidStrategyResponse {
    let (task, engine) = match task_engine(request, ENGINE_NATIVE, PLUGIN_NAME) {
        Ok(t) => t,
        Err(decline) => return decline,
    };
    let spec = match NativeEngineSpec::from_spec_config(engine) {
        Ok(s) => s,
        Err(problems) => {
            let why = problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return BidStrategyResponse::new(
                false,
                format!("accept this native engine spec: {why}"),
            );
        }
    };
    let program = &spec.entrypoint[0];
    if let Err(why) = resolve_program(program, DEFAULT_PATH) {
        return BidStrategyResponse::new(
            false,
            format!("have the program {program:?} installed: {why}"),
        );
    }
    if let Some(decline) = mounts(task, caps, allow_listed) {
        return decline;
    }
    // A task without a network asks for `Default`, which is never the host's network: it is
    // Bridge where Bridge works, else None.
    let network = task
        .network
        .as_ref()
        .map_or(Network::Default, |n| n.network_type);
    if network == Network::Bridge && !caps.networks.contains(&Network::Bridge) {
        return BidStrategyResponse::new(
            false,
            "give native jobs Bridge networks (it needs a root plugin, `nft` (nftables) installed \
             and a kernel with nf_tables)",
        );
    }
    let ports = task.network.iter().flat_map(|n| &n.ports);
    if let Some((i, p)) = ports
        .enumerate()
        .find(|(_, p)| p.host_network.parse::<std::net::Ipv6Addr>().is_ok())
        .filter(|_| network == Network::Bridge)
    {
        return BidStrategyResponse::new(
            false,
            format!(
                "publish Bridge ports on IPv6 addresses (Network.Ports[{i}].HostNetwork {}: \
                 IPv4 only; leave it empty for every address)",
                p.host_network
            ),
        );
    }
    if matches!(network, Network::None | Network::Default | Network::Http)
        && !caps.network_isolation
    {
        return BidStrategyResponse::new(
            false,
            format!(
                "isolate the network of native jobs ({network} means a network namespace of the \
                 job's own, and making one needs root; ask for Host to share the host's network)"
            ),
        );
    }
    let wanted = &task.resources;
    for (what, asked, enforced) in [
        ("CPU", &wanted.cpu, caps.limits.cpu),
        ("memory", &wanted.memory, caps.limits.memory),
    ] {
        if !asked.trim().is_empty() && !enforced {
            return BidStrategyResponse::new(
                false,
                format!("enforce {what} limits (cgroup mode {:?}); run the plugin as root on a host with cgroups", caps.cgroup_mode),
            );
        }
    }
    if let Ok(gpus) = wanted.gpu.trim().parse::<u64>() {
        let have = caps.gpus.len() as u64;
        if gpus > have {
            return BidStrategyResponse::new(
                false,
                format!(
                    "have {gpus} NVIDIA GPU{} (it has {have})",
                    if gpus == 1 { "" } else { "s" }
                ),
            );
        }
    }
    BidStrategyResponse::new(true, "run native jobs whose program is installed")
}

/// Inputs and outputs need a private filesystem (an output's `Path` can never be the results
/// directory the host picks later); `local` inputs must be allow-listed.
pub fn mounts(
    task: &Task,
    caps: &Capabilities,
    allow_listed: &[PathBuf],
) -> Option<BidStrategyResponse> {
    const NO_ISOLATION: &str =
        "no filesystem isolation on this node: it needs a root plugin and mount namespaces";
    if !caps.filesystem_isolation {
        if !task.input_sources.is_empty() {
            return Some(BidStrategyResponse::new(
                false,
                format!("mount inputs for native jobs ({NO_ISOLATION})"),
            ));
        }
        if !task.result_paths.is_empty() {
            return Some(BidStrategyResponse::new(
                false,
                format!("mount outputs at their Path for native jobs ({NO_ISOLATION})"),
            ));
        }
    }
    let list = AllowList::parse(allow_listed);
    for input in &task.input_sources {
        let Some(source) = input
            .source
            .as_ref()
            .filter(|s| is_local_type(&s.spec_type))
        else {
            continue;
        };
        let param = |key: &str| {
            source
                .params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        };
        let Some(path) = param("SourcePath").and_then(|v| v.as_str()) else {
            return Some(BidStrategyResponse::new(
                false,
                format!(
                    "accept the local input at {:?}: it has no SourcePath",
                    input.target
                ),
            ));
        };
        let writable = param("ReadWrite")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if let Err(denied) = list.check(Path::new(path), writable) {
            return Some(BidStrategyResponse::new(
                false,
                format!("allow this input: {denied}"),
            ));
        }
    }
    None
}

/// What this host has to give.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub cpu: f64,
    pub memory: u64,
    pub disk: u64,
    pub gpus: u64,
}

impl Capacity {
    /// Cores, physical memory, free disk under the state root, GPUs found.
    pub fn of_host(state_dir: &Path, gpus: u64) -> Capacity {
        let cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024);
        let disk = nix::sys::statvfs::statvfs(state_dir)
            .map(|s| s.blocks_available().saturating_mul(s.fragment_size()))
            .unwrap_or(0);
        Capacity {
            cpu,
            memory,
            disk,
            gpus,
        }
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Resource bid: `need` (the job's requirement) against `capacity` minus what running
/// executions hold. Declines what could never fit; asks to wait for what fits once running
/// executions end.
pub fn usage(need: &Resources, capacity: Capacity, held: &Resources) -> BidStrategyResponse {
    // (what, needed, total, held by running executions, how to show an amount)
    type Check = (&'static str, f64, f64, f64, fn(f64) -> String);
    let checks: [Check; 4] = [
        ("CPU", need.cpu, capacity.cpu, held.cpu, |v| {
            format!("{v:.2} cores")
        }),
        (
            "memory",
            need.memory as f64,
            capacity.memory as f64,
            held.memory as f64,
            |v| gib(v as u64),
        ),
        // Disk is shared with everything else on the host: what is free now is what there is.
        ("disk", need.disk as f64, capacity.disk as f64, 0.0, |v| {
            gib(v as u64)
        }),
        (
            "GPUs",
            need.gpu as f64,
            capacity.gpus as f64,
            held.gpu as f64,
            |v| format!("{v}"),
        ),
    ];
    let mut wait_for = Vec::new();
    for (what, need, total, held, show) in checks {
        if need > total {
            return BidStrategyResponse::new(
                false,
                format!(
                    "have enough {what}: the job needs {}, this node has {}",
                    show(need),
                    show(total)
                ),
            );
        }
        if need > total - held {
            wait_for.push(format!(
                "{what} ({} needed, {} free of {} while running executions hold {})",
                show(need),
                show((total - held).max(0.0)),
                show(total),
                show(held)
            ));
        }
    }
    if wait_for.is_empty() {
        return BidStrategyResponse::new(true, "have the resources the job needs");
    }
    let mut r = BidStrategyResponse::new(
        false,
        format!(
            "have enough free {} now; it will once running executions end",
            wait_for.join(", ")
        ),
    );
    r.should_wait = true;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(cpu: f64, memory: u64, disk: u64, gpu: u64) -> Resources {
        Resources {
            cpu,
            memory,
            disk,
            gpu,
            gpus: Vec::new(),
        }
    }

    const CAP: Capacity = Capacity {
        cpu: 2.0,
        memory: 4 << 30,
        disk: 10 << 30,
        gpus: 0,
    };

    #[test]
    fn fits_waits_or_declines() {
        let none = Resources::default();
        let r = usage(&res(1.0, 1 << 30, 0, 0), CAP, &none);
        assert!(r.should_bid && !r.should_wait, "{r:?}");
        assert_eq!(r.reason, "this node does have the resources the job needs");

        let r = usage(&res(1.5, 1 << 30, 0, 0), CAP, &res(1.0, 0, 0, 0));
        assert!(!r.should_bid && r.should_wait, "{r:?}");
        assert!(
            r.reason
                .starts_with("this node does not have enough free CPU"),
            "{}",
            r.reason
        );

        let r = usage(&res(0.5, 8 << 30, 0, 0), CAP, &none);
        assert!(!r.should_bid && !r.should_wait, "{r:?}");
        assert_eq!(
            r.reason,
            "this node does not have enough memory: the job needs 8.00 GiB, this node has 4.00 GiB"
        );

        let r = usage(&res(0.0, 0, 0, 1), CAP, &none);
        assert!(!r.should_bid && r.reason.contains("GPUs"), "{r:?}");
    }

    fn request(inputs: serde_json::Value, outputs: serde_json::Value) -> BidStrategyRequest {
        serde_json::from_value(serde_json::json!({"Job": {"ID": "j", "Tasks": [{
            "Name": "t",
            "Engine": {"Type": "native", "Params": {"Entrypoint": ["sh", "-c", "true"]}},
            "InputSources": inputs,
            "ResultPaths": outputs,
        }]}}))
        .unwrap()
    }

    #[test]
    fn mounts_need_isolation_and_local_inputs_the_allow_list() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        let other = dir.path().join("other");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        let local = |p: &Path, rw: bool| serde_json::json!([{"Source": {"Type": "local", "Params": {"SourcePath": p, "ReadWrite": rw}}, "Target": "/in"}]);
        let staged = serde_json::json!([{"Source": {"Type": "ipfs", "Params": {"CID": "x"}}, "Target": "/in"}]);
        let outputs = serde_json::json!([{"Name": "out", "Path": "/outputs"}]);
        let none = serde_json::json!([]);
        let list = [allowed.clone()];
        // Both isolate the network: a task without one asks for `Default`, a namespace.
        let isolated = Capabilities {
            filesystem_isolation: true,
            network_isolation: true,
            ..Capabilities::default()
        };
        let plain = Capabilities {
            network_isolation: true,
            ..Capabilities::default()
        };
        let cases: [(&str, BidStrategyRequest, &Capabilities, bool, &str); 7] = [
            (
                "no mounts",
                request(none.clone(), none.clone()),
                &plain,
                true,
                "run native",
            ),
            (
                "input, no isolation",
                request(staged.clone(), none.clone()),
                &plain,
                false,
                "mount inputs",
            ),
            (
                "output, no isolation",
                request(none.clone(), outputs.clone()),
                &plain,
                false,
                "mount outputs",
            ),
            (
                "staged input",
                request(staged, outputs.clone()),
                &isolated,
                true,
                "run native",
            ),
            (
                "allowed local",
                request(local(&allowed, false), outputs.clone()),
                &isolated,
                true,
                "run native",
            ),
            (
                "writable local",
                request(local(&allowed, true), none.clone()),
                &isolated,
                false,
                "read-only",
            ),
            (
                "other local",
                request(local(&other, false), none),
                &isolated,
                false,
                "not allow-listed",
            ),
        ];
        for (what, req, caps, bid, reason) in cases {
            let r = semantic(&req, caps, &list);
            assert_eq!(r.should_bid, bid, "{what}: {r:?}");
            assert!(r.reason.contains(reason), "{what}: {}", r.reason);
        }
    }

    #[test]
    fn the_default_network_is_declined_where_no_namespace_can_be_made() {
        let none = serde_json::json!([]);
        let open = Capabilities::default();
        // No `Network` in the task is `Default`: never the host's, so without namespaces it
        // is declined, with the way out named.
        let r = semantic(&request(none.clone(), none), &open, &[]);
        assert!(!r.should_bid, "{r:?}");
        assert!(r.reason.contains("ask for Host"), "{}", r.reason);
    }

    #[test]
    fn bridge_and_http_are_bid_where_this_host_has_them() {
        let with_network = |net: serde_json::Value| -> BidStrategyRequest {
            let mut r = serde_json::to_value(request(serde_json::json!([]), serde_json::json!([])))
                .unwrap();
            r["Job"]["Tasks"][0]["Network"] = net;
            serde_json::from_value(r).unwrap()
        };
        let namespaces = Capabilities {
            network_isolation: true,
            networks: vec![
                Network::Host,
                Network::None,
                Network::Http,
                Network::Default,
            ],
            ..Capabilities::default()
        };
        let bridge = Capabilities {
            networks: vec![Network::Bridge],
            ..namespaces.clone()
        };
        let bridge_task = with_network(serde_json::json!({"Type": "Bridge"}));
        let r = semantic(&bridge_task, &namespaces, &[]);
        assert!(!r.should_bid && r.reason.contains("nft"), "{r:?}");
        assert!(semantic(&bridge_task, &bridge, &[]).should_bid);
        let v6 = with_network(serde_json::json!({"Type": "Bridge", "Ports": [
            {"Name": "p", "Static": 2000, "HostNetwork": "::1"}
        ]}));
        let r = semantic(&v6, &bridge, &[]);
        assert!(!r.should_bid && r.reason.contains("IPv6"), "{r:?}");
        let http = with_network(serde_json::json!({"Type": "HTTP", "Domains": ["a.com"]}));
        assert!(semantic(&http, &namespaces, &[]).should_bid);
        let r = semantic(&http, &Capabilities::default(), &[]);
        assert!(!r.should_bid && r.reason.contains("HTTP"), "{r:?}");
    }
}
