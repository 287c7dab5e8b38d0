//! NVIDIA GPUs for a job: which device nodes it gets in its private `/dev`, and the v1 `devices`
//! cgroup rules that keep it away from every GPU it was not allocated.
//!
//! A GPU's node is `/dev/nvidia<minor>`, where the minor is the driver's (nvidia-smi's
//! `minor_number`, NVML's `nvmlDeviceGetMinorNumber`), not the index CUDA and nvidia-smi number
//! the GPUs by. Every GPU node and `nvidiactl`/`nvidia-modeset` share char major 195;
//! `nvidia-uvm` has a dynamic major of its own and no per-GPU state.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use executor_schema::{Gpu, Resources};
use serde::{Deserialize, Serialize};

/// Char major of the NVIDIA GPU and control nodes.
pub const NVIDIA_MAJOR: u32 = 195;
pub const DEFAULT_DEVICE_DIR: &str = "/dev";
/// Nodes CUDA needs besides the GPUs' own, bound where the host has them.
pub const CONTROL_NODES: [&str; 4] = [
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
];

/// A GPU as detected on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGpu {
    pub gpu: Gpu,
    /// The device minor (`/dev/nvidia<minor>`); `None` where nvidia-smi reports none.
    pub minor: Option<u32>,
}

/// What the monitor does for a job on a host with GPUs (or a job asking for some).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuSandbox {
    /// Host device nodes bound into the job's private `/dev` under their own names: the control
    /// nodes and the allocated GPUs. Empty for a job allocated no GPU.
    pub nodes: Vec<PathBuf>,
    /// Minors of char major 195 the job may open (allocated GPUs and the control nodes); every
    /// other one is denied where a v1 devices cgroup exists.
    pub allowed_minors: Vec<u32>,
}

/// The GPUs `resources` allocates, by index: the listed `GPUs` (Bacalhau's allocation), else the
/// first `GPU` of this host (as docker's `--gpus N`). The message says why it cannot be done.
pub fn allocated<'a>(
    resources: &Resources,
    host: &'a [HostGpu],
) -> Result<Vec<&'a HostGpu>, String> {
    let have = || {
        if host.is_empty() {
            "this node has none".to_owned()
        } else {
            let list: Vec<String> = host.iter().map(|g| g.gpu.index.to_string()).collect();
            format!("this node has {} (index {})", host.len(), list.join(", "))
        }
    };
    if !resources.gpus.is_empty() {
        let mut out = Vec::new();
        for g in &resources.gpus {
            if !g.vendor.is_empty() && !g.vendor.eq_ignore_ascii_case("NVIDIA") {
                return Err(format!(
                    "GPU {} is a {} GPU; the native executor supports NVIDIA GPUs only",
                    g.index, g.vendor
                ));
            }
            let Some(found) = host.iter().find(|h| h.gpu.index == g.index) else {
                return Err(format!(
                    "the job was allocated NVIDIA GPU {} and {}",
                    g.index,
                    have()
                ));
            };
            if !out.iter().any(|o: &&HostGpu| o.gpu.index == g.index) {
                out.push(found);
            }
        }
        return Ok(out);
    }
    let want = usize::try_from(resources.gpu).unwrap_or(usize::MAX);
    if want > host.len() {
        return Err(format!(
            "the job asks for {} GPU{} and {}",
            resources.gpu,
            if resources.gpu == 1 { "" } else { "s" },
            have()
        ));
    }
    let mut sorted: Vec<&HostGpu> = host.iter().collect();
    sorted.sort_by_key(|g| g.gpu.index);
    sorted.truncate(want);
    Ok(sorted)
}

/// The GPU part of a job's sandbox: `None` on a host without GPUs for a job asking for none.
/// Checks that every node the job needs exists in `device_dir` as the device it should be.
pub fn plan(
    resources: &Resources,
    host: &[HostGpu],
    device_dir: &Path,
) -> Result<Option<GpuSandbox>, String> {
    let gpus = allocated(resources, host)?;
    if host.is_empty() && gpus.is_empty() {
        return Ok(None);
    }
    let mut out = GpuSandbox::default();
    if gpus.is_empty() {
        return Ok(Some(out));
    }
    for name in CONTROL_NODES {
        let path = device_dir.join(name);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_char_device() {
            return Err(format!("{} is not a character device", path.display()));
        }
        let (major, minor) = split(meta.rdev());
        if major == NVIDIA_MAJOR {
            out.allowed_minors.push(minor);
        }
        out.nodes.push(path);
    }
    for g in gpus {
        let Some(minor) = g.minor else {
            return Err(format!(
                "nvidia-smi reports no minor number for GPU {}, so its device node is unknown",
                g.gpu.index
            ));
        };
        let path = device_dir.join(format!("nvidia{minor}"));
        let meta = std::fs::metadata(&path).map_err(|e| {
            format!(
                "the device node {} of GPU {} cannot be used: {e}",
                path.display(),
                g.gpu.index
            )
        })?;
        if !meta.file_type().is_char_device() || split(meta.rdev()) != (NVIDIA_MAJOR, minor) {
            return Err(format!(
                "{} is not the device node of GPU {} (char {NVIDIA_MAJOR}:{minor})",
                path.display(),
                g.gpu.index
            ));
        }
        out.nodes.push(path);
        out.allowed_minors.push(minor);
    }
    out.allowed_minors.sort_unstable();
    out.allowed_minors.dedup();
    Ok(Some(out))
}

fn split(rdev: u64) -> (u32, u32) {
    (libc::major(rdev), libc::minor(rdev))
}

/// `devices.allow` entries for a cgroup that denies everything else (`a` written to
/// `devices.deny` first): every block device and every registered char major of this host as it
/// was, except major 195, of which only `allowed_minors`. A v1 devices cgroup cannot deny one
/// major under a default of "allow" and still list what it does, so it lists what it allows.
pub fn device_allow_rules(allowed_minors: &[u32], proc_devices: &str) -> Vec<String> {
    let mut rules = vec!["b *:* rwm".to_owned()];
    rules.extend(
        char_majors(proc_devices)
            .into_iter()
            .filter(|m| *m != NVIDIA_MAJOR)
            .map(|m| format!("c {m}:* rwm")),
    );
    rules.extend(
        allowed_minors
            .iter()
            .map(|n| format!("c {NVIDIA_MAJOR}:{n} rwm")),
    );
    rules
}

/// The majors of the `Character devices:` section of `/proc/devices`, sorted, each once.
pub fn char_majors(proc_devices: &str) -> Vec<u32> {
    let mut majors: Vec<u32> = proc_devices
        .lines()
        .skip_while(|l| !l.starts_with("Character devices"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Block devices"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    majors.sort_unstable();
    majors.dedup();
    majors
}

/// The variables that tell CUDA and the NVIDIA tools which GPUs a job has, naming the GPUs at
/// `indices` (as Bacalhau's compute node sets them for an allocation).
pub fn visible_devices_env(indices: &[String]) -> [(String, String); 2] {
    let list = indices.join(",");
    [
        ("CUDA_VISIBLE_DEVICES".into(), list.clone()),
        ("NVIDIA_VISIBLE_DEVICES".into(), list),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(n: u64) -> Vec<HostGpu> {
        (0..n)
            .map(|i| HostGpu {
                gpu: Gpu {
                    index: i,
                    name: "T4".into(),
                    vendor: "NVIDIA".into(),
                    memory: 15360,
                    pci_address: String::new(),
                },
                minor: Some(i as u32 + 10),
            })
            .collect()
    }

    fn gpu(index: u64, vendor: &str) -> Gpu {
        Gpu {
            index,
            vendor: vendor.into(),
            ..Gpu::default()
        }
    }

    #[test]
    fn allocation_follows_the_list_then_the_count() {
        let h = host(3);
        let listed = Resources {
            gpu: 2,
            gpus: vec![gpu(2, "NVIDIA"), gpu(0, "")],
            ..Resources::default()
        };
        let got: Vec<u64> = allocated(&listed, &h)
            .unwrap()
            .iter()
            .map(|g| g.gpu.index)
            .collect();
        assert_eq!(got, [2, 0]);
        let counted = Resources {
            gpu: 2,
            ..Resources::default()
        };
        let got: Vec<u64> = allocated(&counted, &h)
            .unwrap()
            .iter()
            .map(|g| g.gpu.index)
            .collect();
        assert_eq!(got, [0, 1]);

        let err = allocated(
            &Resources {
                gpu: 4,
                ..Resources::default()
            },
            &h,
        )
        .unwrap_err();
        assert!(
            err.contains("asks for 4 GPUs") && err.contains("has 3"),
            "{err}"
        );
        let err = allocated(
            &Resources {
                gpu: 1,
                ..Resources::default()
            },
            &[],
        )
        .unwrap_err();
        assert!(err.contains("has none"), "{err}");
        let missing = Resources {
            gpu: 1,
            gpus: vec![gpu(7, "NVIDIA")],
            ..Resources::default()
        };
        assert!(allocated(&missing, &h).unwrap_err().contains("GPU 7"));
        let amd = Resources {
            gpu: 1,
            gpus: vec![gpu(0, "AMD/ATI")],
            ..Resources::default()
        };
        assert!(allocated(&amd, &h)
            .unwrap_err()
            .contains("NVIDIA GPUs only"));
    }

    #[test]
    fn no_gpus_anywhere_is_no_gpu_sandbox() {
        let none = plan(&Resources::default(), &[], Path::new("/nonexistent")).unwrap();
        assert_eq!(none, None);
        let guard = plan(&Resources::default(), &host(2), Path::new("/nonexistent")).unwrap();
        assert_eq!(guard, Some(GpuSandbox::default()));
        let err = plan(
            &Resources {
                gpu: 1,
                ..Resources::default()
            },
            &host(2),
            Path::new("/nonexistent"),
        )
        .unwrap_err();
        assert!(err.contains("/nonexistent/nvidia10"), "{err}");
    }

    #[test]
    fn rules_allow_everything_but_other_gpus() {
        let text = "Character devices:\n  1 mem\n  4 tty\n  4 ttyS\n195 nvidia-frontend\n\
                    510 nvidia-uvm\n\nBlock devices:\n  7 loop\n";
        assert_eq!(char_majors(text), [1, 4, 195, 510]);
        assert_eq!(
            device_allow_rules(&[1, 255], text),
            [
                "b *:* rwm",
                "c 1:* rwm",
                "c 4:* rwm",
                "c 510:* rwm",
                "c 195:1 rwm",
                "c 195:255 rwm"
            ]
        );
    }
}
