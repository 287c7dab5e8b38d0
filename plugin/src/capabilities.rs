//! What this host can honour, measured rather than assumed: the cgroup layout and its
//! controllers, whether a network namespace can really be made, GPUs.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use executor_schema::{
    Capabilities, CgroupMode, EnforcedLimits, Gpu, GpuDeviceControl, Network, PluginConfig,
};

use crate::monitor::spawn::DEFAULT_PATH;
use crate::sandbox::cgroup::{CgroupConfig, CgroupManager, Mode, DEFAULT_PIDS_MAX};
use crate::sandbox::gpu::HostGpu;
use crate::sandbox::user;
use crate::sandbox::{mounts, netns};

/// Detects this host's capabilities for `config`. Prepares the cgroup base as a side effect
/// (the same base the monitors will use), so a misconfigured base shows up here.
pub fn detect(config: &PluginConfig) -> Capabilities {
    detect_with_gpus(config).0
}

/// [`detect`], and the GPUs with their device minors (which the wire's `GPU` does not carry).
pub fn detect_with_gpus(config: &PluginConfig) -> (Capabilities, Vec<HostGpu>) {
    let mut caps = Capabilities::default();
    let mut devices_cgroup = false;
    let cg = CgroupConfig {
        base: config.cgroup_base.clone(),
        default_pids_max: Some(config.default_pids_max.unwrap_or(DEFAULT_PIDS_MAX)),
    };
    match CgroupManager::detect(&cg) {
        Ok(m) => {
            caps.cgroup_mode = match m.mode() {
                Mode::V2 => CgroupMode::V2,
                Mode::V1 => CgroupMode::V1,
                Mode::Hybrid => CgroupMode::Hybrid,
                Mode::None => CgroupMode::None,
            };
            let e = m.enforces();
            devices_cgroup = m.has_devices();
            caps.limits = EnforcedLimits {
                cpu: e.cpu,
                memory: e.memory,
                pids: e.pids,
                disk: false,
            };
            if let Some(why) = m.unavailable_reason() {
                caps.notes.push(format!(
                    "cgroups are not usable ({why}): jobs run with rlimits and a process-group kill only; \
                     jobs asking for CPU or memory limits are refused"
                ));
            }
            for (name, on) in [("cpu", e.cpu), ("memory", e.memory), ("pids", e.pids)] {
                if !on && m.mode() != Mode::None {
                    caps.notes.push(format!(
                        "no {name} controller in this {} cgroup layout: {name} limits are not enforced",
                        m.mode().as_str()
                    ));
                }
            }
            if e.memory && !e.swap {
                caps.notes.push(
                    "swap is not capped (no swap accounting): a job may swap beyond its memory limit"
                        .into(),
                );
            }
        }
        Err(e) => caps.notes.push(format!(
            "cgroups could not be prepared ({e}): jobs run with rlimits and a process-group kill only; \
             jobs asking for CPU or memory limits are refused"
        )),
    }
    caps.notes
        .push("disk limits are not enforced: the Disk resource is not limited".into());

    match network_isolation_works() {
        Ok(()) => caps.network_isolation = true,
        Err(why) => caps.notes.push(format!(
            "no network isolation ({why}): jobs with network type None, HTTP or Default are \
             refused"
        )),
    }

    // Host always; None and HTTP with a namespace; Bridge where its tools and root are;
    // Default where it means Bridge or None.
    caps.networks = vec![Network::Host, Network::Full];
    if caps.network_isolation {
        caps.networks.extend([Network::None, Network::Http]);
    }
    let bridge = if caps.network_isolation {
        crate::sandbox::bridge::probe(config.bridge_subnet.as_deref())
    } else {
        Some("network namespaces need a root plugin".into())
    };
    if bridge.is_none() {
        caps.networks.push(Network::Bridge);
    }
    if caps.network_isolation {
        caps.networks.push(Network::Default);
    }
    match bridge {
        None => caps.notes.push(
            "Bridge jobs turn on IPv4 forwarding (net.ipv4.ip_forward, for their NAT) and it \
             stays on; the host's own forward rules apply to other traffic as before"
                .into(),
        ),
        Some(why) => caps.notes.push(format!(
            "no Bridge networks ({why}): jobs with network type Bridge are refused, and Default \
             means None"
        )),
    }

    if !crate::sandbox::seccomp::supported() {
        caps.notes.push(
            "this kernel takes no seccomp filters: jobs run without the system-call filter that \
             otherwise refuses them new namespaces, the keyrings, ptrace, BPF and io_uring"
                .into(),
        );
    }
    caps.filesystem_isolation = mounts::supported();
    if !caps.filesystem_isolation {
        caps.notes.push(
            "no filesystem isolation (it needs a root plugin and mount namespaces): jobs see the \
             host's filesystem; jobs with inputs, or with outputs whose Path is not \
             results/<Name> itself, are refused"
                .into(),
        );
    }
    if user::running_as_root() {
        match user::job_uid_range(config) {
            Ok(Some(range)) => {
                caps.run_as_user = Some(format!("a uid of its own per execution ({range})"))
            }
            Ok(None) => match user::job_user(config.run_as_user.as_deref()) {
                Ok(u) => {
                    caps.notes.push(format!(
                        "every job runs as the one configured user {}: running jobs can see, \
                         trace and signal each other's processes; leave runAsUser unset to give \
                         each execution a uid of its own",
                        u.describe()
                    ));
                    caps.run_as_user = Some(u.describe());
                }
                Err(e) => caps.notes.push(format!(
                    "jobs are refused: they must run as an unprivileged user and {}",
                    e.message
                )),
            },
            Err(e) => caps.notes.push(format!("jobs are refused: {}", e.message)),
        }
    } else if let Some(user) = &config.run_as_user {
        caps.notes.push(format!(
            "runAsUser {user:?} is not applied: the plugin is not root, so jobs run as its own \
             user (uid {})",
            nix::unistd::geteuid()
        ));
    }

    let gpus = match nvidia_gpus(config.nvidia_smi.as_deref()) {
        Ok(gpus) => gpus,
        Err(why) => {
            caps.notes.push(why);
            Vec::new()
        }
    };
    caps.gpus = gpus.iter().map(|g| g.gpu.clone()).collect();
    if devices_cgroup {
        caps.gpu_device_control
            .push(GpuDeviceControl::DevicesCgroup);
    }
    if caps.filesystem_isolation {
        caps.gpu_device_control.push(GpuDeviceControl::PrivateDev);
    }
    if !gpus.is_empty() {
        if caps.gpu_device_control.is_empty() {
            caps.notes.push(
                "GPU device nodes are not isolated (no v1 devices cgroup and no private /dev): a \
                 job can open every GPU of this host; CUDA_VISIBLE_DEVICES only hides the others"
                    .into(),
            );
        } else if !devices_cgroup {
            caps.notes.push(
                "GPUs are confined by the job's private /dev only: there is no v1 devices \
                 controller (device control on cgroup v2 needs BPF, which this plugin does not use)"
                    .into(),
            );
        }
    }
    (caps, gpus)
}

/// Runs a throwaway child through the same step a `Network: None` job takes.
fn network_isolation_works() -> Result<(), String> {
    if !netns::supported() {
        return Err("creating a network namespace needs root".into());
    }
    let sh = find_in_path("sh").ok_or("no sh to probe with")?;
    let mut cmd = Command::new(sh);
    cmd.args(["-c", "exit 0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: enter_isolated_network makes raw system calls only.
    unsafe {
        cmd.pre_exec(netns::enter_isolated_network);
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("probe exited with {s}")),
        Err(e) => Err(format!("unshare(CLONE_NEWNET) failed: {e}")),
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned());
    path.split(':')
        .chain(DEFAULT_PATH.split(':'))
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// GPUs from `nvidia-smi` (`configured`, else found in PATH); none (and no note) where it is not
/// installed.
fn nvidia_gpus(configured: Option<&Path>) -> Result<Vec<HostGpu>, String> {
    let smi = match configured {
        Some(p) => p.to_path_buf(),
        None => match find_in_path("nvidia-smi") {
            Some(p) => p,
            None => return Ok(Vec::new()),
        },
    };
    let out = Command::new(&smi)
        .args([
            "--query-gpu=index,name,memory.total,pci.bus_id,minor_number",
            "--format=csv,noheader,nounits",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("GPUs not detected: running {}: {e}", smi.display()))?;
    if !out.status.success() {
        return Err(format!(
            "GPUs not detected: nvidia-smi exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse_nvidia_smi(&String::from_utf8_lossy(&out.stdout))
        .map_err(|e| format!("GPUs not detected: {e}"))
}

/// Parses `index, name, memory.total (MiB), pci.bus_id, minor_number` lines; a minor of
/// `[N/A]` (no device node of its own) is `None`.
pub fn parse_nvidia_smi(text: &str) -> Result<Vec<HostGpu>, String> {
    let mut gpus = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [index, name, memory, pci, minor] = fields[..] else {
            return Err(format!("unexpected nvidia-smi line {line:?}"));
        };
        let num = |what: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("unexpected {what} {v:?} in nvidia-smi line {line:?}"))
        };
        let minor = match minor {
            "[N/A]" | "N/A" => None,
            m => Some(
                u32::try_from(num("minor_number", m)?)
                    .map_err(|_| format!("unexpected minor_number {m:?} in {line:?}"))?,
            ),
        };
        gpus.push(HostGpu {
            gpu: Gpu {
                index: num("index", index)?,
                name: name.to_owned(),
                vendor: "NVIDIA".to_owned(),
                memory: num("memory", memory)?,
                pci_address: pci.to_owned(),
            },
            minor,
        });
    }
    Ok(gpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_smi_lines_become_gpus() {
        let text = "0, NVIDIA H100 80GB HBM3, 81559, 00000000:18:00.0, 3\n\
                    1, Tesla T4, 15360, 00000000:3B:00.0, [N/A]\n";
        let gpus = parse_nvidia_smi(text).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].gpu.name, "NVIDIA H100 80GB HBM3");
        assert_eq!((gpus[0].gpu.index, gpus[0].gpu.memory), (0, 81559));
        assert_eq!(gpus[0].minor, Some(3));
        assert_eq!(gpus[1].gpu.pci_address, "00000000:3B:00.0");
        assert_eq!(gpus[1].gpu.vendor, "NVIDIA");
        assert_eq!(gpus[1].minor, None);
        assert!(parse_nvidia_smi("").unwrap().is_empty());
        assert!(parse_nvidia_smi("0, x, [N/A], 0:0, 0").is_err());
        assert!(parse_nvidia_smi("0, x, 1, 0:0").is_err());
        assert!(parse_nvidia_smi("garbage").is_err());
    }
}
