// tidy_text in AssemblyScript: normalise whitespace and mask e-mail addresses in one string field of every
// record; the same transform as examples/wat/tidy_text.wat and as the built-in `clean` kind with
// normalize_whitespace(keep_newlines=false) + mask_pii(types=[email]). Stage ABI v1 (docs/wasm-stages.md).
//
// Built with `--runtime stub --use abort=`: no garbage collector, and no `env.abort` import (a failed
// allocation traps instead), so the module imports nothing. It works on raw bytes only: no managed strings
// or arrays, which keeps it fast and allocation-free per record.

let out: usize = 0; // output write pointer
let fld: usize = 0; // field name (raw bytes) and its length
let fldLen: i32 = 0;
let dec: usize = 0; // decoded string value
let decLen: i32 = 0;
let nrm: usize = 0; // after whitespace normalisation
let nrmLen: i32 = 0;
let msk: usize = 0; // after masking
let mskLen: i32 = 0;
let textName: usize = 0; // "text", the default field
let hexDigits: usize = 0;
let emailBytes: usize = 0; // "[EMAIL]"

export function alloc(len: i32): i32 {
  return <i32>heap.alloc(<usize>len);
}

@inline function put(b: u32): void {
  store<u8>(out, <u8>b);
  out += 1;
}

function copyTo(src: usize, n: i32): void {
  memory.copy(out, src, <usize>n);
  out += <usize>n;
}

@inline function isInvisible(c: u32): bool {
  return c <= 0x08 || c == 0x0b || c == 0x0c || (c >= 0x0e && c <= 0x1f) || c == 0x7f ||
    (c >= 0x200b && c <= 0x200d) || c == 0x2060 || c == 0xfeff;
}

// Python's str.isspace(), less what isInvisible already removed.
@inline function isSpace(c: u32): bool {
  if (c < 0x80) return c == 0x20 || (c >= 0x09 && c <= 0x0d);
  return c == 0x85 || c == 0xa0 || c == 0x1680 || c == 0x3000 || (c >= 0x2000 && c <= 0x200a) ||
    c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f;
}

@inline function isAlpha(b: u32): bool {
  const l = b | 0x20;
  return l >= 0x61 && l <= 0x7a;
}

@inline function isAlnum(b: u32): bool {
  return isAlpha(b) || (b >= 0x30 && b <= 0x39);
}

// [A-Za-z0-9._%+-]
@inline function isLocal(b: u32): bool {
  return isAlnum(b) || b == 0x2e || b == 0x5f || b == 0x25 || b == 0x2b || b == 0x2d;
}

// [A-Za-z0-9-]
@inline function isLabel(b: u32): bool {
  return isAlnum(b) || b == 0x2d;
}

function hex(b: u32): u32 {
  if (b - 0x30 <= 9) return b - 0x30;
  return (b | 0x20) - 0x61 + 10;
}

function hex4(p: usize): u32 {
  return (hex(load<u8>(p)) << 12) | (hex(load<u8>(p + 1)) << 8) | (hex(load<u8>(p + 2)) << 4) | hex(load<u8>(p + 3));
}

function utf8(w: usize, c: u32): usize {
  if (c < 0x80) {
    store<u8>(w, <u8>c);
    return w + 1;
  }
  if (c < 0x800) {
    store<u8>(w, <u8>(0xc0 | (c >> 6)));
    store<u8>(w + 1, <u8>(0x80 | (c & 0x3f)));
    return w + 2;
  }
  if (c < 0x10000) {
    store<u8>(w, <u8>(0xe0 | (c >> 12)));
    store<u8>(w + 1, <u8>(0x80 | ((c >> 6) & 0x3f)));
    store<u8>(w + 2, <u8>(0x80 | (c & 0x3f)));
    return w + 3;
  }
  store<u8>(w, <u8>(0xf0 | (c >> 18)));
  store<u8>(w + 1, <u8>(0x80 | ((c >> 12) & 0x3f)));
  store<u8>(w + 2, <u8>(0x80 | ((c >> 6) & 0x3f)));
  store<u8>(w + 3, <u8>(0x80 | (c & 0x3f)));
  return w + 4;
}

// p is just after the opening quote; returns the position after the closing quote.
function decode(p: usize): usize {
  let w = dec;
  while (true) {
    let b: u32 = load<u8>(p);
    if (b == 0x22) break;
    if (b != 0x5c) {
      store<u8>(w, <u8>b);
      w += 1;
      p += 1;
      continue;
    }
    b = load<u8>(p + 1);
    p += 2;
    if (b == 0x75) {
      let c = hex4(p);
      p += 4;
      if ((c & 0xfc00) == 0xd800 && load<u8>(p) == 0x5c) {
        const lo = hex4(p + 2);
        c = 0x10000 + (((c & 0x3ff) << 10) | (lo & 0x3ff));
        p += 6;
      }
      w = utf8(w, c);
      continue;
    }
    let c = b; // \" \\ \/ stand for themselves
    if (b == 0x6e) c = 0x0a;
    else if (b == 0x74) c = 0x09;
    else if (b == 0x72) c = 0x0d;
    else if (b == 0x62) c = 0x08;
    else if (b == 0x66) c = 0x0c;
    store<u8>(w, <u8>c);
    w += 1;
  }
  decLen = <i32>(w - dec);
  return p + 1;
}

function normalise(): void {
  let i = dec;
  const end = dec + <usize>decLen;
  let w = nrm;
  let pending = false;
  let started = false;
  while (i < end) {
    const b: u32 = load<u8>(i);
    let c: u32;
    let n: usize;
    if (b < 0x80) {
      c = b;
      n = 1;
    } else if (b < 0xe0) {
      c = ((b & 0x1f) << 6) | (<u32>load<u8>(i + 1) & 0x3f);
      n = 2;
    } else if (b < 0xf0) {
      c = ((b & 0x0f) << 12) | ((<u32>load<u8>(i + 1) & 0x3f) << 6) | (<u32>load<u8>(i + 2) & 0x3f);
      n = 3;
    } else {
      c = 0x10000; // no 4-byte character is whitespace or invisible
      n = 4;
    }
    if (!isInvisible(c)) {
      if (isSpace(c)) {
        pending = started;
      } else {
        if (pending) {
          store<u8>(w, 0x20);
          w += 1;
          pending = false;
        }
        memory.copy(w, i, n);
        w += n;
        started = true;
      }
    }
    i += n;
  }
  nrmLen = <i32>(w - nrm);
}

// The end of the domain starting at d (right after '@'), or 0: labels of [A-Za-z0-9-]+ joined by single
// dots; the match ends after the letters that start the last label (not the first) with at least two.
function domainEnd(d: usize, end: usize): usize {
  let j = d;
  while (j < end && isLabel(load<u8>(j))) j++;
  if (j == d) return 0;
  let best: usize = 0;
  while (j + 1 < end && load<u8>(j) == 0x2e && isLabel(load<u8>(j + 1))) {
    j++;
    let k = j;
    while (k < end && isAlpha(load<u8>(k))) k++;
    if (k - j >= 2) best = k;
    while (j < end && isLabel(load<u8>(j))) j++;
  }
  return best;
}

function mask(): void {
  let i = nrm;
  let last = nrm;
  const end = nrm + <usize>nrmLen;
  let w = msk;
  while (i < end) {
    if (load<u8>(i) == 0x40) {
      let s = i;
      while (s > last && isLocal(load<u8>(s - 1))) s--;
      if (s < i) {
        const e = domainEnd(i + 1, end);
        if (e != 0) {
          memory.copy(w, last, s - last);
          w += s - last;
          memory.copy(w, emailBytes, 7);
          w += 7;
          last = e;
          i = e;
          continue;
        }
      }
    }
    i++;
  }
  memory.copy(w, last, end - last);
  w += end - last;
  mskLen = <i32>(w - msk);
}

function emitString(): void {
  put(0x22);
  let i = msk;
  const end = msk + <usize>mskLen;
  while (i < end) {
    const b: u32 = load<u8>(i);
    if (b == 0x22 || b == 0x5c) {
      put(0x5c);
      put(b);
    } else if (b < 0x20) {
      put(0x5c);
      put(0x75);
      put(0x30);
      put(0x30);
      put(load<u8>(hexDigits + <usize>(b >> 4)));
      put(load<u8>(hexDigits + <usize>(b & 15)));
    } else {
      put(b);
    }
    i++;
  }
  put(0x22);
}

// The end of the JSON value at p: the ',' or '}' (or ']') that closes it at its own depth.
function skipValue(p: usize): usize {
  let depth = 0;
  while (true) {
    const b: u32 = load<u8>(p);
    if (b == 0x22) {
      p++;
      while (true) {
        const s: u32 = load<u8>(p);
        if (s == 0x22) break;
        p += s == 0x5c ? 2 : 1;
      }
      p++;
      continue;
    }
    if (b == 0x7b || b == 0x5b) depth++;
    if (b == 0x7d || b == 0x5d) {
      if (depth == 0) break;
      depth--;
    }
    if (depth == 0 && b == 0x2c) break;
    p++;
  }
  return p;
}

function same(a: usize, b: usize, n: i32): bool {
  for (let i = 0; i < n; i++) {
    if (load<u8>(a + <usize>i) != load<u8>(b + <usize>i)) return false;
  }
  return true;
}

// One record line starting at p ('{'); writes it to the output; returns the position after its '}'.
function record(p: usize): usize {
  put(0x7b);
  p++;
  while (load<u8>(p) != 0x7d) {
    const k = p;
    let v = p + 1;
    while (load<u8>(v) != 0x22) v += load<u8>(v) == 0x5c ? 2 : 1;
    copyTo(k, <i32>(v - k) + 2); // the key, its closing quote and the ':'
    const e = v + 2;
    if (<i32>(v - k) - 1 == fldLen && same(k + 1, fld, fldLen) && load<u8>(e) == 0x22) {
      p = decode(e + 1);
      normalise();
      mask();
      emitString();
    } else {
      p = skipValue(e);
      copyTo(e, <i32>(p - e));
    }
    if (load<u8>(p) != 0x2c) break;
    put(0x2c);
    p++;
  }
  put(0x7d);
  return p + 1;
}

function setup(): void {
  if (textName != 0) return;
  textName = heap.alloc(4);
  store<u8>(textName, 0x74);
  store<u8>(textName + 1, 0x65);
  store<u8>(textName + 2, 0x78);
  store<u8>(textName + 3, 0x74);
  emailBytes = heap.alloc(8);
  store<u64>(emailBytes, 0x5d4c49414d455b); // "[EMAIL]" little-endian, and a zero byte
  hexDigits = heap.alloc(16);
  for (let t = 0; t < 16; t++) store<u8>(hexDigits + <usize>t, <u8>(t < 10 ? 0x30 + t : 0x57 + t));
}

// Finds "field":"<name>" in the config line [p, end) and points fld at <name>.
function readConfig(p: usize, end: usize): void {
  fld = textName;
  fldLen = 4;
  // "field":"  =  22 66 69 65 6c 64 22 3a 22
  while (p + 9 <= end) {
    if (load<u8>(p) == 0x22 && load<u8>(p + 1) == 0x66 && load<u8>(p + 2) == 0x69 && load<u8>(p + 3) == 0x65 &&
        load<u8>(p + 4) == 0x6c && load<u8>(p + 5) == 0x64 && load<u8>(p + 6) == 0x22 && load<u8>(p + 7) == 0x3a &&
        load<u8>(p + 8) == 0x22) {
      let q = p + 9;
      fld = q;
      while (load<u8>(q) != 0x22) q++;
      fldLen = <i32>(q - fld);
      return;
    }
    p++;
  }
}

export function process(ptr: i32, len: i32): i64 {
  setup();
  const p = <usize>ptr;
  const n = <usize>len;
  const end = p + n;
  dec = heap.alloc(n);
  nrm = heap.alloc(n);
  msk = heap.alloc(2 * n + 64);
  const start = heap.alloc(2 * n + 64);
  out = start;
  let line = p;
  while (line < end && load<u8>(line) != 0x0a) line++;
  readConfig(p, line);
  line++;
  while (line < end) {
    line = record(line);
    put(0x0a);
    line++; // past the '\n'
  }
  return (<i64>start << 32) | <i64>(out - start);
}
