//! The real sandbox around a job: its own cgroup (limits, whole-tree kill, OOM detection),
//! rlimits with `no_new_privs`, and an isolated network namespace for `Network: None`.
//!
//! Where cgroups cannot be used, a job still runs with rlimits and the process-group kill, but
//! only when it asked for no limit that needs them: a requested limit is never dropped.

use crate::sandbox::cgroup::{
    self, CgroupConfig, CgroupError, CgroupLimits, CgroupManager, CgroupRecord, JobCgroup, Mode,
};
use crate::sandbox::netns;
use crate::sandbox::rlimit::{RlimitConfig, RlimitPlan, DEFAULT_NOFILE};
use crate::state::MonitorSpec;

use super::spawn::{JobSandbox, PreExecStep, SandboxError};

#[derive(Default)]
pub struct HostSandbox {
    cgroup: Option<JobCgroup>,
    steps: Vec<PreExecStep>,
}

impl HostSandbox {
    pub fn new() -> Self {
        HostSandbox::default()
    }
}

/// The cgroup name for an execution: its id where that is a valid name, else the id with the
/// odd bytes replaced and this monitor's pid appended (the name is recorded, never re-derived).
fn cgroup_name(execution_id: &str) -> String {
    if cgroup::is_valid_name(execution_id) {
        return execution_id.to_owned();
    }
    let clean: String = execution_id
        .chars()
        .take(150)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("x{}-{}", clean, std::process::id())
}

/// The requested limits that need a cgroup, by name.
fn requested(spec: &MonitorSpec) -> Vec<&'static str> {
    let s = &spec.sandbox;
    let mut v = Vec::new();
    if s.cpu_cores.is_some() {
        v.push("cpu");
    }
    if s.memory_bytes.is_some() {
        v.push("memory");
    }
    v
}

fn cgroup_error(e: CgroupError) -> SandboxError {
    match e {
        CgroupError::Unenforceable { .. } | CgroupError::InvalidLimit { .. } => {
            SandboxError::Unsupported(e.to_string())
        }
        other => SandboxError::Setup(format!("creating the job's cgroup: {other}")),
    }
}

impl JobSandbox for HostSandbox {
    fn prepare(&mut self, spec: &MonitorSpec) -> Result<(), SandboxError> {
        let s = &spec.sandbox;
        if s.isolate_network && !netns::supported() {
            return Err(SandboxError::Unsupported(
                "network type None (an isolated network) is not supported on this host: \
                 creating a network namespace needs root"
                    .into(),
            ));
        }
        let config = CgroupConfig {
            base: s.cgroup_base.clone(),
            default_pids_max: None,
        };
        // A host whose cgroups cannot be prepared is treated as one without cgroups: jobs that
        // need no limit still run; the others are refused below with the reason.
        let (manager, unusable) = match CgroupManager::detect(&config) {
            Ok(m) if m.mode() == Mode::None => {
                let why = m.unavailable_reason().unwrap_or("no cgroups").to_owned();
                (None, Some(why))
            }
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e.to_string())),
        };
        match manager {
            None => {
                let wanted = requested(spec);
                if !wanted.is_empty() {
                    return Err(SandboxError::Unsupported(format!(
                        "the {} limit{} cannot be enforced on this host: cgroups are not usable ({})",
                        wanted.join(" and "),
                        if wanted.len() > 1 { "s" } else { "" },
                        unusable.unwrap_or_default()
                    )));
                }
                eprintln!(
                    "monitor: running without a cgroup ({}): rlimits and process-group kill only",
                    unusable.unwrap_or_default()
                );
            }
            Some(m) => {
                let limits = CgroupLimits {
                    cpu: s.cpu_cores,
                    memory: s.memory_bytes,
                    // A guard, not a requirement: only where a pids controller exists.
                    pids: s.pids_max.filter(|_| m.enforces().pids),
                };
                let job = m
                    .create_replacing(&cgroup_name(&spec.execution_id), &limits)
                    .map_err(cgroup_error)?;
                let join = job.join_handle();
                self.cgroup = Some(job);
                let join = join.map_err(cgroup_error)?;
                self.steps.push(Box::new(move || join.join_self()));
            }
        }
        if s.isolate_network {
            self.steps.push(Box::new(netns::enter_isolated_network));
        }
        let plan = RlimitPlan::new(&RlimitConfig {
            nofile: s.nofile.unwrap_or(DEFAULT_NOFILE),
            ..RlimitConfig::default()
        })
        .map_err(|e| SandboxError::Setup(format!("planning the job's rlimits: {e}")))?;
        // Last: no_new_privs must not get in the way of the steps before it.
        self.steps.push(Box::new(move || plan.apply()));
        Ok(())
    }

    fn cgroup_record(&self) -> Option<CgroupRecord> {
        self.cgroup.as_ref().map(JobCgroup::record)
    }

    fn pre_exec_steps(&mut self) -> Vec<PreExecStep> {
        std::mem::take(&mut self.steps)
    }

    fn kill_all(&mut self) {
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.kill_all() {
                eprintln!("monitor: killing the job's cgroup: {e}");
            }
        }
    }

    fn oom_killed(&self) -> bool {
        match self.cgroup.as_ref().map(JobCgroup::oom_killed) {
            Some(Ok(killed)) => killed,
            Some(Err(e)) => {
                eprintln!("monitor: reading the job's OOM events: {e}");
                false
            }
            None => false,
        }
    }

    fn cleanup(&mut self) {
        self.steps.clear();
        if let Some(cg) = self.cgroup.take() {
            let removed = cg.kill_all().and_then(|()| cg.remove());
            if let Err(e) = removed {
                eprintln!("monitor: removing the job's cgroup: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_execution_ids_still_name_a_cgroup() {
        assert_eq!(cgroup_name("e-1f2a.b_c"), "e-1f2a.b_c");
        for odd in ["supervisor", "a b", "é", "x:y"] {
            let n = cgroup_name(odd);
            assert!(cgroup::is_valid_name(&n), "{odd:?} -> {n:?}");
        }
        let long = "ü".repeat(200);
        assert!(cgroup::is_valid_name(&cgroup_name(&long)));
    }
}
