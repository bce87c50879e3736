;; tidy_text: normalise whitespace and mask e-mail addresses in one string field of every record.
;;
;; The same transform as the built-in `clean` kind with the steps
;;   {"op": "normalize_whitespace", "keep_newlines": false}, {"op": "mask_pii", "types": ["email"]}
;; byte for byte (wasmstages/tests/test_examples.py). Stage ABI v1 (docs/wasm-stages.md): exports memory,
;; alloc(len) -> ptr and process(ptr, len) -> (out_ptr << 32) | out_len; imports nothing.
;;
;; Input: line 1 is the module config ({"field": "text"}, the field defaulting to "text"); then one record a
;; line, compact JSON as the portal writes it. Output: one record a line, the field's string value replaced.
;;
;; Whitespace: zero-width and control characters (U+200B-U+200D, U+2060, U+FEFF, U+0000-U+0008, U+000B,
;; U+000C, U+000E-U+001F, U+007F) are removed; runs of the remaining Unicode whitespace (what Python's
;; str.split() splits on) become one space; leading and trailing whitespace goes.
;; E-mail: [A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,} (leftmost, greedy) -> [EMAIL].
(module
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 1024))
  (global $o (mut i32) (i32.const 0))       ;; output write pointer
  (global $fld (mut i32) (i32.const 0))     ;; field name (raw bytes) and its length
  (global $fldlen (mut i32) (i32.const 4))
  (global $dec (mut i32) (i32.const 0))     ;; decoded string value
  (global $declen (mut i32) (i32.const 0))
  (global $nrm (mut i32) (i32.const 0))     ;; after whitespace normalisation
  (global $nrmlen (mut i32) (i32.const 0))
  (global $msk (mut i32) (i32.const 0))     ;; after masking
  (global $msklen (mut i32) (i32.const 0))
  (data (i32.const 16) "text")
  (data (i32.const 32) "[EMAIL]")
  (data (i32.const 48) "\"field\":\"")
  (data (i32.const 64) "0123456789abcdef")

  ;; ---- memory ---------------------------------------------------------------------------------
  (func $alloc (export "alloc") (param $n i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (if (i32.lt_u (local.get $end) (local.get $p)) (then (return (i32.const 0))))
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                                      (i32.const 16)))
              (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $p))

  (func $put (param $b i32)
    (i32.store8 (global.get $o) (local.get $b))
    (global.set $o (i32.add (global.get $o) (i32.const 1))))

  (func $copy (param $src i32) (param $n i32)
    (memory.copy (global.get $o) (local.get $src) (local.get $n))
    (global.set $o (i32.add (global.get $o) (local.get $n))))

  ;; ---- character classes ----------------------------------------------------------------------
  (func $is_invisible (param $c i32) (result i32)
    (i32.or
      (i32.or
        (i32.le_u (local.get $c) (i32.const 0x08))
        (i32.or (i32.eq (local.get $c) (i32.const 0x0b)) (i32.eq (local.get $c) (i32.const 0x0c))))
      (i32.or
        (i32.or
          (i32.and (i32.ge_u (local.get $c) (i32.const 0x0e)) (i32.le_u (local.get $c) (i32.const 0x1f)))
          (i32.eq (local.get $c) (i32.const 0x7f)))
        (i32.or
          (i32.and (i32.ge_u (local.get $c) (i32.const 0x200b)) (i32.le_u (local.get $c) (i32.const 0x200d)))
          (i32.or (i32.eq (local.get $c) (i32.const 0x2060)) (i32.eq (local.get $c) (i32.const 0xfeff)))))))

  ;; Python's str.isspace(), less what $is_invisible already removed.
  (func $is_space (param $c i32) (result i32)
    (if (i32.lt_u (local.get $c) (i32.const 0x80))
      (then
        (return (i32.or
          (i32.eq (local.get $c) (i32.const 0x20))
          (i32.and (i32.ge_u (local.get $c) (i32.const 0x09)) (i32.le_u (local.get $c) (i32.const 0x0d)))))))
    (i32.or
      (i32.or
        (i32.or (i32.eq (local.get $c) (i32.const 0x85)) (i32.eq (local.get $c) (i32.const 0xa0)))
        (i32.or (i32.eq (local.get $c) (i32.const 0x1680)) (i32.eq (local.get $c) (i32.const 0x3000))))
      (i32.or
        (i32.and (i32.ge_u (local.get $c) (i32.const 0x2000)) (i32.le_u (local.get $c) (i32.const 0x200a)))
        (i32.or
          (i32.or (i32.eq (local.get $c) (i32.const 0x2028)) (i32.eq (local.get $c) (i32.const 0x2029)))
          (i32.or (i32.eq (local.get $c) (i32.const 0x202f)) (i32.eq (local.get $c) (i32.const 0x205f)))))))

  (func $is_alpha (param $b i32) (result i32)
    (local.set $b (i32.or (local.get $b) (i32.const 0x20)))
    (i32.and (i32.ge_u (local.get $b) (i32.const 0x61)) (i32.le_u (local.get $b) (i32.const 0x7a))))

  (func $is_alnum (param $b i32) (result i32)
    (i32.or (call $is_alpha (local.get $b))
            (i32.and (i32.ge_u (local.get $b) (i32.const 0x30)) (i32.le_u (local.get $b) (i32.const 0x39)))))

  ;; [A-Za-z0-9._%+-]
  (func $is_local (param $b i32) (result i32)
    (i32.or (call $is_alnum (local.get $b))
      (i32.or (i32.or (i32.eq (local.get $b) (i32.const 0x2e)) (i32.eq (local.get $b) (i32.const 0x5f)))
              (i32.or (i32.eq (local.get $b) (i32.const 0x25))
                      (i32.or (i32.eq (local.get $b) (i32.const 0x2b)) (i32.eq (local.get $b) (i32.const 0x2d)))))))

  ;; [A-Za-z0-9-]
  (func $is_label (param $b i32) (result i32)
    (i32.or (call $is_alnum (local.get $b)) (i32.eq (local.get $b) (i32.const 0x2d))))

  ;; ---- JSON string -> UTF-8 bytes at $dec -------------------------------------------------------
  (func $hex (param $b i32) (result i32)
    (if (i32.le_u (i32.sub (local.get $b) (i32.const 0x30)) (i32.const 9))
      (then (return (i32.sub (local.get $b) (i32.const 0x30)))))
    (i32.add (i32.sub (i32.or (local.get $b) (i32.const 0x20)) (i32.const 0x61)) (i32.const 10)))

  (func $hex4 (param $p i32) (result i32)
    (i32.or
      (i32.or (i32.shl (call $hex (i32.load8_u (local.get $p))) (i32.const 12))
              (i32.shl (call $hex (i32.load8_u offset=1 (local.get $p))) (i32.const 8)))
      (i32.or (i32.shl (call $hex (i32.load8_u offset=2 (local.get $p))) (i32.const 4))
              (call $hex (i32.load8_u offset=3 (local.get $p))))))

  (func $utf8 (param $w i32) (param $c i32) (result i32)
    (if (i32.lt_u (local.get $c) (i32.const 0x80))
      (then (i32.store8 (local.get $w) (local.get $c)) (return (i32.add (local.get $w) (i32.const 1)))))
    (if (i32.lt_u (local.get $c) (i32.const 0x800))
      (then
        (i32.store8 (local.get $w) (i32.or (i32.const 0xc0) (i32.shr_u (local.get $c) (i32.const 6))))
        (i32.store8 offset=1 (local.get $w) (i32.or (i32.const 0x80) (i32.and (local.get $c) (i32.const 0x3f))))
        (return (i32.add (local.get $w) (i32.const 2)))))
    (if (i32.lt_u (local.get $c) (i32.const 0x10000))
      (then
        (i32.store8 (local.get $w) (i32.or (i32.const 0xe0) (i32.shr_u (local.get $c) (i32.const 12))))
        (i32.store8 offset=1 (local.get $w)
          (i32.or (i32.const 0x80) (i32.and (i32.shr_u (local.get $c) (i32.const 6)) (i32.const 0x3f))))
        (i32.store8 offset=2 (local.get $w) (i32.or (i32.const 0x80) (i32.and (local.get $c) (i32.const 0x3f))))
        (return (i32.add (local.get $w) (i32.const 3)))))
    (i32.store8 (local.get $w) (i32.or (i32.const 0xf0) (i32.shr_u (local.get $c) (i32.const 18))))
    (i32.store8 offset=1 (local.get $w)
      (i32.or (i32.const 0x80) (i32.and (i32.shr_u (local.get $c) (i32.const 12)) (i32.const 0x3f))))
    (i32.store8 offset=2 (local.get $w)
      (i32.or (i32.const 0x80) (i32.and (i32.shr_u (local.get $c) (i32.const 6)) (i32.const 0x3f))))
    (i32.store8 offset=3 (local.get $w) (i32.or (i32.const 0x80) (i32.and (local.get $c) (i32.const 0x3f))))
    (i32.add (local.get $w) (i32.const 4)))

  ;; $p is just after the opening quote; returns the position after the closing quote.
  (func $decode (param $p i32) (result i32)
    (local $w i32) (local $b i32) (local $c i32) (local $lo i32)
    (local.set $w (global.get $dec))
    (block $done
      (loop $next
        (local.set $b (i32.load8_u (local.get $p)))
        (br_if $done (i32.eq (local.get $b) (i32.const 0x22)))
        (if (i32.ne (local.get $b) (i32.const 0x5c))
          (then
            (i32.store8 (local.get $w) (local.get $b))
            (local.set $w (i32.add (local.get $w) (i32.const 1)))
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (br $next)))
        (local.set $b (i32.load8_u offset=1 (local.get $p)))
        (local.set $p (i32.add (local.get $p) (i32.const 2)))
        (if (i32.eq (local.get $b) (i32.const 0x75)) ;; \uXXXX, maybe a surrogate pair
          (then
            (local.set $c (call $hex4 (local.get $p)))
            (local.set $p (i32.add (local.get $p) (i32.const 4)))
            (if (i32.and (i32.eq (i32.and (local.get $c) (i32.const 0xfc00)) (i32.const 0xd800))
                         (i32.eq (i32.load8_u (local.get $p)) (i32.const 0x5c)))
              (then
                (local.set $lo (call $hex4 (i32.add (local.get $p) (i32.const 2))))
                (local.set $c (i32.add (i32.const 0x10000)
                  (i32.or (i32.shl (i32.and (local.get $c) (i32.const 0x3ff)) (i32.const 10))
                          (i32.and (local.get $lo) (i32.const 0x3ff)))))
                (local.set $p (i32.add (local.get $p) (i32.const 6)))))
            (local.set $w (call $utf8 (local.get $w) (local.get $c)))
            (br $next)))
        (local.set $c (local.get $b)) ;; \" \\ \/ stand for themselves
        (if (i32.eq (local.get $b) (i32.const 0x6e)) (then (local.set $c (i32.const 0x0a))))
        (if (i32.eq (local.get $b) (i32.const 0x74)) (then (local.set $c (i32.const 0x09))))
        (if (i32.eq (local.get $b) (i32.const 0x72)) (then (local.set $c (i32.const 0x0d))))
        (if (i32.eq (local.get $b) (i32.const 0x62)) (then (local.set $c (i32.const 0x08))))
        (if (i32.eq (local.get $b) (i32.const 0x66)) (then (local.set $c (i32.const 0x0c))))
        (i32.store8 (local.get $w) (local.get $c))
        (local.set $w (i32.add (local.get $w) (i32.const 1)))
        (br $next)))
    (global.set $declen (i32.sub (local.get $w) (global.get $dec)))
    (i32.add (local.get $p) (i32.const 1)))

  ;; ---- $dec -> $nrm: drop invisibles, collapse whitespace runs to one space, trim ------------------
  (func $normalise
    (local $i i32) (local $end i32) (local $w i32) (local $b i32) (local $c i32) (local $n i32)
    (local $pending i32) (local $started i32)
    (local.set $i (global.get $dec))
    (local.set $end (i32.add (global.get $dec) (global.get $declen)))
    (local.set $w (global.get $nrm))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (local.set $b (i32.load8_u (local.get $i)))
        (if (i32.lt_u (local.get $b) (i32.const 0x80))
          (then (local.set $c (local.get $b)) (local.set $n (i32.const 1)))
          (else
            (if (i32.lt_u (local.get $b) (i32.const 0xe0))
              (then
                (local.set $n (i32.const 2))
                (local.set $c (i32.or (i32.shl (i32.and (local.get $b) (i32.const 0x1f)) (i32.const 6))
                                      (i32.and (i32.load8_u offset=1 (local.get $i)) (i32.const 0x3f)))))
              (else
                (if (i32.lt_u (local.get $b) (i32.const 0xf0))
                  (then
                    (local.set $n (i32.const 3))
                    (local.set $c (i32.or
                      (i32.or (i32.shl (i32.and (local.get $b) (i32.const 0x0f)) (i32.const 12))
                              (i32.shl (i32.and (i32.load8_u offset=1 (local.get $i)) (i32.const 0x3f)) (i32.const 6)))
                      (i32.and (i32.load8_u offset=2 (local.get $i)) (i32.const 0x3f)))))
                  (else
                    (local.set $n (i32.const 4))
                    (local.set $c (i32.const 0x10000)))))))) ;; no 4-byte character is whitespace or invisible
        (if (call $is_invisible (local.get $c))
          (then)
          (else
            (if (call $is_space (local.get $c))
              (then (local.set $pending (local.get $started)))
              (else
                (if (local.get $pending)
                  (then
                    (i32.store8 (local.get $w) (i32.const 0x20))
                    (local.set $w (i32.add (local.get $w) (i32.const 1)))
                    (local.set $pending (i32.const 0))))
                (memory.copy (local.get $w) (local.get $i) (local.get $n))
                (local.set $w (i32.add (local.get $w) (local.get $n)))
                (local.set $started (i32.const 1))))))
        (local.set $i (i32.add (local.get $i) (local.get $n)))
        (br $next)))
    (global.set $nrmlen (i32.sub (local.get $w) (global.get $nrm))))

  ;; ---- $nrm -> $msk: e-mail addresses become [EMAIL] ------------------------------------------------
  ;; The end of the domain that starts at $d (right after '@'), or 0 when there is no match: labels of
  ;; [A-Za-z0-9-]+ joined by single dots; the match ends after the letters that start the last label
  ;; (not the first) beginning with at least two letters, as the greedy regex's backtracking settles.
  (func $domain_end (param $d i32) (param $end i32) (result i32)
    (local $j i32) (local $k i32) (local $best i32)
    (local.set $j (local.get $d))
    (block $stop
      (loop $label
        (br_if $stop (i32.ge_u (local.get $j) (local.get $end)))
        (br_if $stop (i32.eqz (call $is_label (i32.load8_u (local.get $j)))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $label)))
    (if (i32.eq (local.get $j) (local.get $d)) (then (return (i32.const 0))))
    (block $chain_end
      (loop $chain
        ;; here $j is at the end of a label; another needs '.' and a label character
        (br_if $chain_end (i32.ge_u (i32.add (local.get $j) (i32.const 1)) (local.get $end)))
        (br_if $chain_end (i32.ne (i32.load8_u (local.get $j)) (i32.const 0x2e)))
        (br_if $chain_end (i32.eqz (call $is_label (i32.load8_u offset=1 (local.get $j)))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (local.set $k (local.get $j))
        (block $alpha_end
          (loop $alpha
            (br_if $alpha_end (i32.ge_u (local.get $k) (local.get $end)))
            (br_if $alpha_end (i32.eqz (call $is_alpha (i32.load8_u (local.get $k)))))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $alpha)))
        (if (i32.ge_u (i32.sub (local.get $k) (local.get $j)) (i32.const 2)) (then (local.set $best (local.get $k))))
        (block $rest
          (loop $more
            (br_if $rest (i32.ge_u (local.get $j) (local.get $end)))
            (br_if $rest (i32.eqz (call $is_label (i32.load8_u (local.get $j)))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br $more)))
        (br $chain)))
    (local.get $best))

  (func $mask
    (local $i i32) (local $end i32) (local $last i32) (local $w i32) (local $s i32) (local $e i32)
    (local.set $i (global.get $nrm))
    (local.set $last (global.get $nrm))
    (local.set $end (i32.add (global.get $nrm) (global.get $nrmlen)))
    (local.set $w (global.get $msk))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (if (i32.eq (i32.load8_u (local.get $i)) (i32.const 0x40))
          (then
            (local.set $s (local.get $i))
            (block $run_start
              (loop $back
                (br_if $run_start (i32.le_u (local.get $s) (local.get $last)))
                (br_if $run_start (i32.eqz (call $is_local (i32.load8_u (i32.sub (local.get $s) (i32.const 1))))))
                (local.set $s (i32.sub (local.get $s) (i32.const 1)))
                (br $back)))
            (if (i32.lt_u (local.get $s) (local.get $i))
              (then
                (local.set $e (call $domain_end (i32.add (local.get $i) (i32.const 1)) (local.get $end)))
                (if (local.get $e)
                  (then
                    (memory.copy (local.get $w) (local.get $last) (i32.sub (local.get $s) (local.get $last)))
                    (local.set $w (i32.add (local.get $w) (i32.sub (local.get $s) (local.get $last))))
                    (memory.copy (local.get $w) (i32.const 32) (i32.const 7))
                    (local.set $w (i32.add (local.get $w) (i32.const 7)))
                    (local.set $last (local.get $e))
                    (local.set $i (local.get $e))
                    (br $next)))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (memory.copy (local.get $w) (local.get $last) (i32.sub (local.get $end) (local.get $last)))
    (local.set $w (i32.add (local.get $w) (i32.sub (local.get $end) (local.get $last))))
    (global.set $msklen (i32.sub (local.get $w) (global.get $msk))))

  ;; ---- $msk -> output as a JSON string ---------------------------------------------------------
  (func $emit_string
    (local $i i32) (local $end i32) (local $b i32)
    (call $put (i32.const 0x22))
    (local.set $i (global.get $msk))
    (local.set $end (i32.add (global.get $msk) (global.get $msklen)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $end)))
        (local.set $b (i32.load8_u (local.get $i)))
        (if (i32.or (i32.eq (local.get $b) (i32.const 0x22)) (i32.eq (local.get $b) (i32.const 0x5c)))
          (then (call $put (i32.const 0x5c)) (call $put (local.get $b)))
          (else
            (if (i32.lt_u (local.get $b) (i32.const 0x20))
              (then
                (call $put (i32.const 0x5c)) (call $put (i32.const 0x75))
                (call $put (i32.const 0x30)) (call $put (i32.const 0x30))
                (call $put (i32.load8_u offset=64 (i32.shr_u (local.get $b) (i32.const 4))))
                (call $put (i32.load8_u offset=64 (i32.and (local.get $b) (i32.const 15)))))
              (else (call $put (local.get $b))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (call $put (i32.const 0x22)))

  ;; ---- records -----------------------------------------------------------------------------------
  ;; The end of the JSON value at $p: the ',' or '}' (or ']') that closes it at its own depth.
  (func $skip_value (param $p i32) (result i32)
    (local $depth i32) (local $b i32)
    (block $done
      (loop $next
        (local.set $b (i32.load8_u (local.get $p)))
        (if (i32.eq (local.get $b) (i32.const 0x22))
          (then
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (block $str_end
              (loop $str
                (local.set $b (i32.load8_u (local.get $p)))
                (br_if $str_end (i32.eq (local.get $b) (i32.const 0x22)))
                (local.set $p (i32.add (local.get $p)
                  (select (i32.const 2) (i32.const 1) (i32.eq (local.get $b) (i32.const 0x5c)))))
                (br $str)))
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (br $next)))
        (if (i32.or (i32.eq (local.get $b) (i32.const 0x7b)) (i32.eq (local.get $b) (i32.const 0x5b)))
          (then (local.set $depth (i32.add (local.get $depth) (i32.const 1)))))
        (if (i32.or (i32.eq (local.get $b) (i32.const 0x7d)) (i32.eq (local.get $b) (i32.const 0x5d)))
          (then
            (br_if $done (i32.eqz (local.get $depth)))
            (local.set $depth (i32.sub (local.get $depth) (i32.const 1)))))
        (br_if $done (i32.and (i32.eqz (local.get $depth)) (i32.eq (local.get $b) (i32.const 0x2c))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $p))

  (func $same (param $a i32) (param $b i32) (param $n i32) (result i32)
    (block $differ
      (loop $next
        (if (i32.eqz (local.get $n)) (then (return (i32.const 1))))
        (br_if $differ (i32.ne (i32.load8_u (local.get $a)) (i32.load8_u (local.get $b))))
        (local.set $a (i32.add (local.get $a) (i32.const 1)))
        (local.set $b (i32.add (local.get $b) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  ;; One record line starting at $p ('{'); writes it to the output; returns the position after its '}'.
  (func $record (param $p i32) (result i32)
    (local $k i32) (local $v i32) (local $e i32)
    (call $put (i32.const 0x7b))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (block $done
      (loop $member
        (br_if $done (i32.eq (i32.load8_u (local.get $p)) (i32.const 0x7d)))
        ;; key: copy it and the colon as they are
        (local.set $k (local.get $p))
        (local.set $v (i32.add (local.get $p) (i32.const 1)))
        (block $key_end
          (loop $key
            (br_if $key_end (i32.eq (i32.load8_u (local.get $v)) (i32.const 0x22)))
            (local.set $v (i32.add (local.get $v)
              (select (i32.const 2) (i32.const 1) (i32.eq (i32.load8_u (local.get $v)) (i32.const 0x5c)))))
            (br $key)))
        ;; $v at the key's closing quote; the value starts after the ':'
        (call $copy (local.get $k) (i32.add (i32.sub (local.get $v) (local.get $k)) (i32.const 2)))
        (local.set $e (i32.add (local.get $v) (i32.const 2)))
        (if (i32.and
              (i32.and (i32.eq (i32.sub (i32.sub (local.get $v) (local.get $k)) (i32.const 1)) (global.get $fldlen))
                       (call $same (i32.add (local.get $k) (i32.const 1)) (global.get $fld) (global.get $fldlen)))
              (i32.eq (i32.load8_u (local.get $e)) (i32.const 0x22)))
          (then
            (local.set $p (call $decode (i32.add (local.get $e) (i32.const 1))))
            (call $normalise)
            (call $mask)
            (call $emit_string))
          (else
            (local.set $p (call $skip_value (local.get $e)))
            (call $copy (local.get $e) (i32.sub (local.get $p) (local.get $e)))))
        (br_if $done (i32.ne (i32.load8_u (local.get $p)) (i32.const 0x2c)))
        (call $put (i32.const 0x2c))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $member)))
    (call $put (i32.const 0x7d))
    (i32.add (local.get $p) (i32.const 1)))

  ;; Finds "field":"<name>" in the config line [$p, $end) and points $fld at <name>.
  (func $read_config (param $p i32) (param $end i32)
    (local $q i32)
    (global.set $fld (i32.const 16))
    (global.set $fldlen (i32.const 4))
    (block $none
      (loop $scan
        (br_if $none (i32.gt_u (i32.add (local.get $p) (i32.const 9)) (local.get $end)))
        (if (call $same (local.get $p) (i32.const 48) (i32.const 9))
          (then
            (local.set $q (i32.add (local.get $p) (i32.const 9)))
            (global.set $fld (local.get $q))
            (block $name_end
              (loop $name
                (br_if $name_end (i32.eq (i32.load8_u (local.get $q)) (i32.const 0x22)))
                (local.set $q (i32.add (local.get $q) (i32.const 1)))
                (br $name)))
            (global.set $fldlen (i32.sub (local.get $q) (global.get $fld)))
            (return)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $scan))))

  (func (export "process") (param $p i32) (param $n i32) (result i64)
    (local $end i32) (local $out i32) (local $line i32)
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    ;; scratch: a decoded or normalised value fits in $n bytes, a masked one in 2 * $n (an address of 6 bytes
    ;; becomes 7), and so does the output (a character escaped on output was escaped on input)
    (global.set $dec (call $alloc (local.get $n)))
    (global.set $nrm (call $alloc (local.get $n)))
    (global.set $msk (call $alloc (i32.add (i32.shl (local.get $n) (i32.const 1)) (i32.const 64))))
    (local.set $out (call $alloc (i32.add (i32.shl (local.get $n) (i32.const 1)) (i32.const 64))))
    (if (i32.or (i32.or (i32.eqz (global.get $dec)) (i32.eqz (global.get $nrm)))
                (i32.or (i32.eqz (global.get $msk)) (i32.eqz (local.get $out))))
      (then unreachable)) ;; out of memory: the batch fails naming the memory limit
    (global.set $o (local.get $out))
    (local.set $line (local.get $p))
    (block $cfg_end
      (loop $cfg
        (br_if $cfg_end (i32.ge_u (local.get $line) (local.get $end)))
        (br_if $cfg_end (i32.eq (i32.load8_u (local.get $line)) (i32.const 0x0a)))
        (local.set $line (i32.add (local.get $line) (i32.const 1)))
        (br $cfg)))
    (call $read_config (local.get $p) (local.get $line))
    (local.set $line (i32.add (local.get $line) (i32.const 1)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $line) (local.get $end)))
        (local.set $line (call $record (local.get $line)))
        (call $put (i32.const 0x0a))
        (local.set $line (i32.add (local.get $line) (i32.const 1))) ;; past the '\n'
        (br $next)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (i32.sub (global.get $o) (local.get $out)))))
)
