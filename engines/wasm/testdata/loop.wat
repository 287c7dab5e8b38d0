;; Never ends: for cancel and deadline.
(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $l (br $l))))
