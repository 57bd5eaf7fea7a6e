;; The bundled example job of `wasm-jobs demo`, written against the canonical
;; ABI of wit/job.wit so that it builds with no guest toolchain (wasm-jobs
;; componentizes it at run time with wit-component).
;;
;; run: a body starting with "retry" asks for a retry after 1 s; one starting
;; with "fatal" fails fatally; any other body has its words counted (the
;; count is the job's work; it has no WASI imports, so it prints nothing)
;; and succeeds. on-exit always succeeds.
(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (global $words (mut i32) (i32.const 0))
  (data (i32.const 1024) "retry")
  (data (i32.const 1040) "fatal")
  (data (i32.const 1056) "asked to retry")
  (data (i32.const 1072) "asked to fail")

  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr
      (i32.and
        (i32.sub (i32.add (global.get $heap) (local.get $align)) (i32.const 1))
        (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $ptr) (local.get $new_size)))
    (block $done
      (loop $grow
        (br_if $done (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))
        (br $grow)))
    (if (local.get $old_size)
      (then (memory.copy (local.get $ptr) (local.get $old) (local.get $old_size))))
    (local.get $ptr))

  ;; Does the body start with the 5-byte word at $word?
  (func $starts_with (param $body i32) (param $len i32) (param $word i32) (result i32)
    (local $i i32)
    (if (i32.lt_u (local.get $len) (i32.const 5)) (then (return (i32.const 0))))
    (block $no
      (loop $next
        (br_if $no (i32.ne
          (i32.load8_u (i32.add (local.get $body) (local.get $i)))
          (i32.load8_u (i32.add (local.get $word) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $next (i32.lt_u (local.get $i) (i32.const 5)))
        (return (i32.const 1))))
    (i32.const 0))

  (func $is_space (param $c i32) (result i32)
    (i32.or
      (i32.or (i32.eq (local.get $c) (i32.const 32)) (i32.eq (local.get $c) (i32.const 9)))
      (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13)))))

  (func $count_words (param $body i32) (param $len i32) (result i32)
    (local $i i32) (local $n i32) (local $in i32) (local $space i32)
    (block $end
      (loop $next
        (br_if $end (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $space (call $is_space (i32.load8_u (i32.add (local.get $body) (local.get $i)))))
        (if (i32.and (i32.eqz (local.get $space)) (i32.eqz (local.get $in)))
          (then (local.set $n (i32.add (local.get $n) (i32.const 1)))))
        (local.set $in (i32.eqz (local.get $space)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $n))

  (func (export "run")
    (param $id_ptr i32) (param $id_len i32) (param $body_ptr i32) (param $body_len i32)
    (param $attrs_ptr i32) (param $attrs_len i32) (param $rc i32) (result i32)
    (if (call $starts_with (local.get $body_ptr) (local.get $body_len) (i32.const 1024))
      (then
        ;; err(retry({reason: "asked to retry", delay-seconds: some(1)}))
        (i32.store8 (i32.const 16) (i32.const 1))
        (i32.store8 (i32.const 20) (i32.const 0))
        (i32.store (i32.const 24) (i32.const 1056))
        (i32.store (i32.const 28) (i32.const 14))
        (i32.store8 (i32.const 32) (i32.const 1))
        (i32.store (i32.const 36) (i32.const 1))
        (return (i32.const 16))))
    (if (call $starts_with (local.get $body_ptr) (local.get $body_len) (i32.const 1040))
      (then
        ;; err(fatal("asked to fail"))
        (i32.store8 (i32.const 16) (i32.const 1))
        (i32.store8 (i32.const 20) (i32.const 1))
        (i32.store (i32.const 24) (i32.const 1072))
        (i32.store (i32.const 28) (i32.const 13))
        (return (i32.const 16))))
    (global.set $words (call $count_words (local.get $body_ptr) (local.get $body_len)))
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.const 16))

  (func (export "on-exit")
    (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
    (i32.store8 (i32.const 16) (i32.const 0))
    (i32.const 16))
)
