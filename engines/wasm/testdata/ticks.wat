;; "tick\n" 300 times, sleeping 200 ms (poll_oneoff on the monotonic clock) after every 50th;
;; then proc_exit(3).
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "tick\n")
  (func $sleep (param $ns i64)
    (i64.store (i32.const 512) (i64.const 0))
    (i32.store8 (i32.const 520) (i32.const 0))
    (i32.store (i32.const 528) (i32.const 1))
    (i64.store (i32.const 536) (local.get $ns))
    (i64.store (i32.const 544) (i64.const 0))
    (i32.store16 (i32.const 552) (i32.const 0))
    (drop (call $poll (i32.const 512) (i32.const 600) (i32.const 1) (i32.const 700))))
  (func (export "_start") (local $i i32)
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 5))
    (block $done
      (loop $l
        (br_if $done (i32.ge_u (local.get $i) (i32.const 300)))
        (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 20)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (if (i32.eqz (i32.rem_u (local.get $i) (i32.const 50)))
          (then (call $sleep (i64.const 200000000))))
        (br $l)))
    (call $exit (i32.const 3))))
