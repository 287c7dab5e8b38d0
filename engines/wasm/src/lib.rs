//! `executor-wasm`: engine `wasm` on the shared plugin runtime. The plugin side
//! ([`engine::Wasm`]) validates, bids, compiles and caches modules ([`cache`]); the job is this
//! binary in run mode ([`runner`]) under the monitor, in the same sandbox as a native job.

pub mod cache;
pub mod engine;
pub mod runner;
