;; An import module, linked as "lib" (its name section's name).
(module $lib
  (func (export "seven") (result i32) (i32.const 7)))
