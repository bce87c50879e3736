// tidy_text in Zig: normalise whitespace and mask e-mail addresses in one string field of every record;
// the same transform as examples/wat/tidy_text.wat and the built-in `clean` kind with
// normalize_whitespace(keep_newlines=false) + mask_pii(types=[email]). Stage ABI v1 (docs/wasm-stages.md).
//
// Build (PyPI `ziglang`): python -m ziglang build-exe tidy_text.zig -target wasm32-freestanding -fno-entry
//   -rdynamic -O ReleaseFast -femit-bin=tidy_text.wasm
// Freestanding: no WASI, no imports. Memory is a bump heap after the initial memory, grown on demand.

var heap: usize = 0;
var out: usize = 0;
var fld: usize = 0;
var fld_len: usize = 4;
var dec: usize = 0;
var dec_len: usize = 0;
var nrm: usize = 0;
var nrm_len: usize = 0;
var msk: usize = 0;
var msk_len: usize = 0;

const text_name = "text";
const email_token = "[EMAIL]";
const hex_digits = "0123456789abcdef";

inline fn ld(addr: usize) u32 {
    return @as(*const u8, @ptrFromInt(addr)).*;
}

inline fn st(addr: usize, b: u32) void {
    @as(*u8, @ptrFromInt(addr)).* = @truncate(b);
}

fn copyBytes(dst: usize, src: usize, n: usize) void {
    const d: [*]u8 = @ptrFromInt(dst);
    const s: [*]const u8 = @ptrFromInt(src);
    @memcpy(d[0..n], s[0..n]);
}

export fn alloc(len: i32) i32 {
    if (heap == 0) heap = @wasmMemorySize(0) * 65536;
    const p = (heap + 7) & ~@as(usize, 7);
    const end = p + @as(usize, @intCast(len));
    const have = @wasmMemorySize(0) * 65536;
    if (end > have) {
        if (@wasmMemoryGrow(0, (end - have + 65535) / 65536) < 0) return 0;
    }
    heap = end;
    return @intCast(p);
}

inline fn put(b: u32) void {
    st(out, b);
    out += 1;
}

inline fn isInvisible(c: u32) bool {
    return c <= 0x08 or c == 0x0b or c == 0x0c or (c >= 0x0e and c <= 0x1f) or c == 0x7f or
        (c >= 0x200b and c <= 0x200d) or c == 0x2060 or c == 0xfeff;
}

// Python's str.isspace(), less what isInvisible already removed.
inline fn isSpace(c: u32) bool {
    if (c < 0x80) return c == 0x20 or (c >= 0x09 and c <= 0x0d);
    return c == 0x85 or c == 0xa0 or c == 0x1680 or c == 0x3000 or (c >= 0x2000 and c <= 0x200a) or
        c == 0x2028 or c == 0x2029 or c == 0x202f or c == 0x205f;
}

inline fn isAlpha(b: u32) bool {
    const l = b | 0x20;
    return l >= 'a' and l <= 'z';
}

inline fn isAlnum(b: u32) bool {
    return isAlpha(b) or (b >= '0' and b <= '9');
}

// [A-Za-z0-9._%+-]
inline fn isLocal(b: u32) bool {
    return isAlnum(b) or b == '.' or b == '_' or b == '%' or b == '+' or b == '-';
}

// [A-Za-z0-9-]
inline fn isLabel(b: u32) bool {
    return isAlnum(b) or b == '-';
}

fn hex(b: u32) u32 {
    if (b -% '0' <= 9) return b - '0';
    return (b | 0x20) - 'a' + 10;
}

fn hex4(p: usize) u32 {
    return (hex(ld(p)) << 12) | (hex(ld(p + 1)) << 8) | (hex(ld(p + 2)) << 4) | hex(ld(p + 3));
}

fn utf8(w: usize, c: u32) usize {
    if (c < 0x80) {
        st(w, c);
        return w + 1;
    }
    if (c < 0x800) {
        st(w, 0xc0 | (c >> 6));
        st(w + 1, 0x80 | (c & 0x3f));
        return w + 2;
    }
    if (c < 0x10000) {
        st(w, 0xe0 | (c >> 12));
        st(w + 1, 0x80 | ((c >> 6) & 0x3f));
        st(w + 2, 0x80 | (c & 0x3f));
        return w + 3;
    }
    st(w, 0xf0 | (c >> 18));
    st(w + 1, 0x80 | ((c >> 12) & 0x3f));
    st(w + 2, 0x80 | ((c >> 6) & 0x3f));
    st(w + 3, 0x80 | (c & 0x3f));
    return w + 4;
}

// p is just after the opening quote; returns the position after the closing quote.
fn decode(start: usize) usize {
    var p = start;
    var w = dec;
    while (true) {
        var b = ld(p);
        if (b == '"') break;
        if (b != '\\') {
            st(w, b);
            w += 1;
            p += 1;
            continue;
        }
        b = ld(p + 1);
        p += 2;
        if (b == 'u') {
            var c = hex4(p);
            p += 4;
            if ((c & 0xfc00) == 0xd800 and ld(p) == '\\') {
                const lo = hex4(p + 2);
                c = 0x10000 + (((c & 0x3ff) << 10) | (lo & 0x3ff));
                p += 6;
            }
            w = utf8(w, c);
            continue;
        }
        const c: u32 = switch (b) {
            'n' => 0x0a,
            't' => 0x09,
            'r' => 0x0d,
            'b' => 0x08,
            'f' => 0x0c,
            else => b, // \" \\ \/ stand for themselves
        };
        st(w, c);
        w += 1;
    }
    dec_len = w - dec;
    return p + 1;
}

fn normalise() void {
    var i = dec;
    const end = dec + dec_len;
    var w = nrm;
    var pending = false;
    var started = false;
    while (i < end) {
        const b = ld(i);
        var c: u32 = undefined;
        var n: usize = undefined;
        if (b < 0x80) {
            c = b;
            n = 1;
        } else if (b < 0xe0) {
            c = ((b & 0x1f) << 6) | (ld(i + 1) & 0x3f);
            n = 2;
        } else if (b < 0xf0) {
            c = ((b & 0x0f) << 12) | ((ld(i + 1) & 0x3f) << 6) | (ld(i + 2) & 0x3f);
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
                    st(w, ' ');
                    w += 1;
                    pending = false;
                }
                copyBytes(w, i, n);
                w += n;
                started = true;
            }
        }
        i += n;
    }
    nrm_len = w - nrm;
}

// The end of the domain starting at d (right after '@'), or 0: labels of [A-Za-z0-9-]+ joined by single
// dots; the match ends after the letters that start the last label (not the first) with at least two.
fn domainEnd(d: usize, end: usize) usize {
    var j = d;
    while (j < end and isLabel(ld(j))) j += 1;
    if (j == d) return 0;
    var best: usize = 0;
    while (j + 1 < end and ld(j) == '.' and isLabel(ld(j + 1))) {
        j += 1;
        var k = j;
        while (k < end and isAlpha(ld(k))) k += 1;
        if (k - j >= 2) best = k;
        while (j < end and isLabel(ld(j))) j += 1;
    }
    return best;
}

fn mask() void {
    var i = nrm;
    var last = nrm;
    const end = nrm + nrm_len;
    var w = msk;
    while (i < end) {
        if (ld(i) == '@') {
            var s = i;
            while (s > last and isLocal(ld(s - 1))) s -= 1;
            if (s < i) {
                const e = domainEnd(i + 1, end);
                if (e != 0) {
                    copyBytes(w, last, s - last);
                    w += s - last;
                    copyBytes(w, @intFromPtr(email_token), email_token.len);
                    w += email_token.len;
                    last = e;
                    i = e;
                    continue;
                }
            }
        }
        i += 1;
    }
    copyBytes(w, last, end - last);
    w += end - last;
    msk_len = w - msk;
}

fn emitString() void {
    put('"');
    var i = msk;
    const end = msk + msk_len;
    while (i < end) : (i += 1) {
        const b = ld(i);
        if (b == '"' or b == '\\') {
            put('\\');
            put(b);
        } else if (b < 0x20) {
            put('\\');
            put('u');
            put('0');
            put('0');
            put(hex_digits[b >> 4]);
            put(hex_digits[b & 15]);
        } else {
            put(b);
        }
    }
    put('"');
}

// The end of the JSON value at p: the ',' or '}' (or ']') that closes it at its own depth.
fn skipValue(start: usize) usize {
    var p = start;
    var depth: u32 = 0;
    while (true) {
        const b = ld(p);
        if (b == '"') {
            p += 1;
            while (ld(p) != '"') p += if (ld(p) == '\\') 2 else 1;
            p += 1;
            continue;
        }
        if (b == '{' or b == '[') depth += 1;
        if (b == '}' or b == ']') {
            if (depth == 0) break;
            depth -= 1;
        }
        if (depth == 0 and b == ',') break;
        p += 1;
    }
    return p;
}

fn same(a: usize, b: usize, n: usize) bool {
    var i: usize = 0;
    while (i < n) : (i += 1) {
        if (ld(a + i) != ld(b + i)) return false;
    }
    return true;
}

// One record line starting at p ('{'); writes it to the output; returns the position after its '}'.
fn record(start: usize) usize {
    var p = start + 1;
    put('{');
    while (ld(p) != '}') {
        const k = p;
        var v = p + 1;
        while (ld(v) != '"') v += if (ld(v) == '\\') 2 else 1;
        copyBytes(out, k, v - k + 2); // the key, its closing quote and the ':'
        out += v - k + 2;
        const e = v + 2;
        if (v - k - 1 == fld_len and same(k + 1, fld, fld_len) and ld(e) == '"') {
            p = decode(e + 1);
            normalise();
            mask();
            emitString();
        } else {
            p = skipValue(e);
            copyBytes(out, e, p - e);
            out += p - e;
        }
        if (ld(p) != ',') break;
        put(',');
        p += 1;
    }
    put('}');
    return p + 1;
}

// Finds "field":"<name>" in the config line [p, end) and points fld at <name>.
fn readConfig(start: usize, end: usize) void {
    const key = "\"field\":\"";
    fld = @intFromPtr(text_name);
    fld_len = text_name.len;
    var p = start;
    while (p + key.len <= end) : (p += 1) {
        if (same(p, @intFromPtr(key), key.len)) {
            var q = p + key.len;
            fld = q;
            while (ld(q) != '"') q += 1;
            fld_len = q - fld;
            return;
        }
    }
}

export fn process(ptr: i32, len: i32) i64 {
    const p: usize = @intCast(ptr);
    const n: usize = @intCast(len);
    const end = p + n;
    const sizes = [_]usize{ n, n, 2 * n + 64, 2 * n + 64 };
    var bufs: [4]usize = undefined;
    for (sizes, 0..) |size, idx| {
        const a = alloc(@intCast(size));
        if (a == 0) @trap(); // out of memory: the batch fails naming the memory limit
        bufs[idx] = @intCast(a);
    }
    dec = bufs[0];
    nrm = bufs[1];
    msk = bufs[2];
    const start = bufs[3];
    out = start;
    var line = p;
    while (line < end and ld(line) != '\n') line += 1;
    readConfig(p, line);
    line += 1;
    while (line < end) {
        line = record(line);
        put('\n');
        line += 1; // past the '\n'
    }
    const out_len: u64 = out - start;
    return @bitCast((@as(u64, start) << 32) | out_len);
}
