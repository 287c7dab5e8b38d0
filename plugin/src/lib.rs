//! The `executor-native` plugin: the JSON-RPC server a host talks to, the executions it runs,
//! the monitor process that supervises each job, the sandbox the job runs in, and its log.
//!
//! The modules by layer, top to bottom; a request walks down them in this order
//! (docs/ARCHITECTURE.md follows one `executor_start` file by file):
//!
//! ```text
//! protocol    stdio      the private protocol descriptors, the cookie, diagnostics on stderr
//!             server     the JSON-RPC connection loop: framing, one task per request, one writer
//!             outlet     the byte-bounded lane for log notifications
//!             rpc        the methods: initialize, bids, start/run/wait/cancel, logs, list, stats
//!             engine     what an engine decides: params, the job it runs, bids, result
//!             bid        the bid strategies; capabilities: what this host can honour
//! executions  registry   the state machine; registry::spec turns a request into a MonitorSpec,
//!                        registry::launch starts and watches monitors, registry::recover rescans
//!             state      the state directory: records, ExecDir, MonitorSpec, process identity
//!             results    the results files (Bacalhau's truncation), the checked results dir
//!             outputs    handing outputs to the job's uid and back, by descriptor walks
//! monitor     monitor    one process per execution: launcher (fork server and spares),
//!                        host_sandbox (what the monitor prepares), spawn (the job's clone),
//!                        supervise (the poll loop to the end)
//! sandbox     sandbox    cgroup, mounts, user/uids, rlimit, seccomp, netns/bridge/http_proxy,
//!                        gpu, allowlist
//! logstore    logstore   the raw_container_logs writer, reader and follower
//! support     fds, memo, timing
//! ```
//!
//! The support modules are crate-private; the rest is `pub` because the crate's tests and the
//! workspace's bench reach into it; the binary's own surface is [`rpc::Plugin`] over
//! [`server`], given an [`engine::Engine`] (`native`, or another crate's, e.g. `executor-wasm`).

pub mod bid;
pub mod capabilities;
pub mod engine;
pub mod entry;
pub(crate) mod fds;
pub mod logstore;
pub(crate) mod memo;
pub mod monitor;
pub mod outlet;
pub mod outputs;
pub mod registry;
pub mod results;
pub mod rpc;
pub mod sandbox;
pub mod server;
pub mod state;
pub mod stdio;
pub mod timing;
