;; Exits with what the import module "lib" returns.
(module
  (import "lib" "seven" (func $seven (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (call $seven))))
