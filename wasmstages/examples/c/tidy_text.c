/* tidy_text in C: normalise whitespace and mask e-mail addresses in one string field of every record;
 * the same transform as examples/wat/tidy_text.wat, examples/zig/tidy_text.zig and the built-in `clean` kind
 * with normalize_whitespace(keep_newlines=false) + mask_pii(types=[email]). Stage ABI v1 (docs/wasm-stages.md).
 *
 * Build (PyPI `ziglang`, whose clang targets wasm32):
 *   python -m ziglang cc --target=wasm32-freestanding -O2 -nostdlib -mbulk-memory -Wl,--no-entry
 *     -Wl,--export=alloc -Wl,--export=process -o tidy_text.wasm tidy_text.c
 * Freestanding: no libc, no WASI, no imports. Memory is a bump heap after the initial memory, grown on demand;
 * the instance lives for one batch, so nothing is ever freed.
 */
#include <stdint.h>

typedef uint32_t u32;
typedef uint64_t u64;
typedef unsigned char u8;

static u32 heap, out, fld, fld_len = 4, dec, dec_len, nrm, nrm_len, msk, msk_len;

static const char text_name[] = "text";
static const char email_token[] = "[EMAIL]";
static const char hex_digits[] = "0123456789abcdef";

#define LD(a) ((u32) * (const u8 *)(uintptr_t)(a))
#define ST(a, b) (*(u8 *)(uintptr_t)(a) = (u8)(b))

static void copy_bytes(u32 dst, u32 src, u32 n) {
    __builtin_memcpy((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
}

__attribute__((export_name("alloc"))) int32_t alloc(int32_t len) {
    if (heap == 0) heap = (u32)__builtin_wasm_memory_size(0) * 65536u;
    u32 p = (heap + 7u) & ~7u;
    u32 end = p + (u32)len;
    u32 have = (u32)__builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        if (__builtin_wasm_memory_grow(0, (end - have + 65535u) / 65536u) == (__SIZE_TYPE__)-1) return 0;
    }
    heap = end;
    return (int32_t)p;
}

static inline void put(u32 b) { ST(out, b); out += 1; }

static inline int is_invisible(u32 c) {
    return c <= 0x08 || c == 0x0b || c == 0x0c || (c >= 0x0e && c <= 0x1f) || c == 0x7f ||
           (c >= 0x200b && c <= 0x200d) || c == 0x2060 || c == 0xfeff;
}

/* Python's str.isspace(), less what is_invisible already removed. */
static inline int is_space(u32 c) {
    if (c < 0x80) return c == 0x20 || (c >= 0x09 && c <= 0x0d);
    return c == 0x85 || c == 0xa0 || c == 0x1680 || c == 0x3000 || (c >= 0x2000 && c <= 0x200a) ||
           c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f;
}

static inline int is_alpha(u32 b) { u32 l = b | 0x20; return l >= 'a' && l <= 'z'; }
static inline int is_alnum(u32 b) { return is_alpha(b) || (b >= '0' && b <= '9'); }
/* [A-Za-z0-9._%+-] */
static inline int is_local(u32 b) { return is_alnum(b) || b == '.' || b == '_' || b == '%' || b == '+' || b == '-'; }
/* [A-Za-z0-9-] */
static inline int is_label(u32 b) { return is_alnum(b) || b == '-'; }

static u32 hex(u32 b) { return b - '0' <= 9 ? b - '0' : (b | 0x20) - 'a' + 10; }
static u32 hex4(u32 p) { return (hex(LD(p)) << 12) | (hex(LD(p + 1)) << 8) | (hex(LD(p + 2)) << 4) | hex(LD(p + 3)); }

static u32 utf8(u32 w, u32 c) {
    if (c < 0x80) { ST(w, c); return w + 1; }
    if (c < 0x800) { ST(w, 0xc0 | (c >> 6)); ST(w + 1, 0x80 | (c & 0x3f)); return w + 2; }
    if (c < 0x10000) {
        ST(w, 0xe0 | (c >> 12)); ST(w + 1, 0x80 | ((c >> 6) & 0x3f)); ST(w + 2, 0x80 | (c & 0x3f));
        return w + 3;
    }
    ST(w, 0xf0 | (c >> 18)); ST(w + 1, 0x80 | ((c >> 12) & 0x3f));
    ST(w + 2, 0x80 | ((c >> 6) & 0x3f)); ST(w + 3, 0x80 | (c & 0x3f));
    return w + 4;
}

/* p is just after the opening quote; returns the position after the closing quote. */
static u32 decode(u32 p) {
    u32 w = dec;
    for (;;) {
        u32 b = LD(p);
        if (b == '"') break;
        if (b != '\\') { ST(w, b); w += 1; p += 1; continue; }
        b = LD(p + 1);
        p += 2;
        if (b == 'u') {
            u32 c = hex4(p);
            p += 4;
            if ((c & 0xfc00) == 0xd800 && LD(p) == '\\') {
                u32 lo = hex4(p + 2);
                c = 0x10000 + (((c & 0x3ff) << 10) | (lo & 0x3ff));
                p += 6;
            }
            w = utf8(w, c);
            continue;
        }
        u32 c;
        switch (b) {
            case 'n': c = 0x0a; break;
            case 't': c = 0x09; break;
            case 'r': c = 0x0d; break;
            case 'b': c = 0x08; break;
            case 'f': c = 0x0c; break;
            default: c = b; /* \" \\ \/ stand for themselves */
        }
        ST(w, c);
        w += 1;
    }
    dec_len = w - dec;
    return p + 1;
}

static void normalise(void) {
    u32 i = dec, end = dec + dec_len, w = nrm;
    int pending = 0, started = 0;
    while (i < end) {
        u32 b = LD(i), c, n;
        if (b < 0x80) { c = b; n = 1; }
        else if (b < 0xe0) { c = ((b & 0x1f) << 6) | (LD(i + 1) & 0x3f); n = 2; }
        else if (b < 0xf0) { c = ((b & 0x0f) << 12) | ((LD(i + 1) & 0x3f) << 6) | (LD(i + 2) & 0x3f); n = 3; }
        else { c = 0x10000; n = 4; } /* no 4-byte character is whitespace or invisible */
        if (!is_invisible(c)) {
            if (is_space(c)) {
                pending = started;
            } else {
                if (pending) { ST(w, ' '); w += 1; pending = 0; }
                copy_bytes(w, i, n);
                w += n;
                started = 1;
            }
        }
        i += n;
    }
    nrm_len = w - nrm;
}

/* The end of the domain starting at d (right after '@'), or 0: labels of [A-Za-z0-9-]+ joined by single dots;
 * the match ends after the letters that start the last label (not the first) with at least two. */
static u32 domain_end(u32 d, u32 end) {
    u32 j = d;
    while (j < end && is_label(LD(j))) j += 1;
    if (j == d) return 0;
    u32 best = 0;
    while (j + 1 < end && LD(j) == '.' && is_label(LD(j + 1))) {
        j += 1;
        u32 k = j;
        while (k < end && is_alpha(LD(k))) k += 1;
        if (k - j >= 2) best = k;
        while (j < end && is_label(LD(j))) j += 1;
    }
    return best;
}

static void mask(void) {
    u32 i = nrm, last = nrm, end = nrm + nrm_len, w = msk;
    while (i < end) {
        if (LD(i) == '@') {
            u32 s = i;
            while (s > last && is_local(LD(s - 1))) s -= 1;
            if (s < i) {
                u32 e = domain_end(i + 1, end);
                if (e != 0) {
                    copy_bytes(w, last, s - last);
                    w += s - last;
                    copy_bytes(w, (u32)(uintptr_t)email_token, sizeof email_token - 1);
                    w += sizeof email_token - 1;
                    last = e;
                    i = e;
                    continue;
                }
            }
        }
        i += 1;
    }
    copy_bytes(w, last, end - last);
    w += end - last;
    msk_len = w - msk;
}

static void emit_string(void) {
    put('"');
    for (u32 i = msk, end = msk + msk_len; i < end; i += 1) {
        u32 b = LD(i);
        if (b == '"' || b == '\\') { put('\\'); put(b); }
        else if (b < 0x20) { put('\\'); put('u'); put('0'); put('0'); put(hex_digits[b >> 4]); put(hex_digits[b & 15]); }
        else put(b);
    }
    put('"');
}

/* The end of the JSON value at p: the ',' or '}' (or ']') that closes it at its own depth. */
static u32 skip_value(u32 p) {
    u32 depth = 0;
    for (;;) {
        u32 b = LD(p);
        if (b == '"') {
            p += 1;
            while (LD(p) != '"') p += LD(p) == '\\' ? 2 : 1;
            p += 1;
            continue;
        }
        if (b == '{' || b == '[') depth += 1;
        if (b == '}' || b == ']') {
            if (depth == 0) break;
            depth -= 1;
        }
        if (depth == 0 && b == ',') break;
        p += 1;
    }
    return p;
}

static int same(u32 a, u32 b, u32 n) {
    for (u32 i = 0; i < n; i += 1)
        if (LD(a + i) != LD(b + i)) return 0;
    return 1;
}

/* One record line starting at p ('{'); writes it to the output; returns the position after its '}'. */
static u32 record(u32 start) {
    u32 p = start + 1;
    put('{');
    while (LD(p) != '}') {
        u32 k = p, v = p + 1;
        while (LD(v) != '"') v += LD(v) == '\\' ? 2 : 1;
        copy_bytes(out, k, v - k + 2); /* the key, its closing quote and the ':' */
        out += v - k + 2;
        u32 e = v + 2;
        if (v - k - 1 == fld_len && same(k + 1, fld, fld_len) && LD(e) == '"') {
            p = decode(e + 1);
            normalise();
            mask();
            emit_string();
        } else {
            p = skip_value(e);
            copy_bytes(out, e, p - e);
            out += p - e;
        }
        if (LD(p) != ',') break;
        put(',');
        p += 1;
    }
    put('}');
    return p + 1;
}

/* Finds "field":"<name>" in the config line [p, end) and points fld at <name>. */
static void read_config(u32 p, u32 end) {
    static const char key[] = "\"field\":\"";
    const u32 key_len = sizeof key - 1;
    fld = (u32)(uintptr_t)text_name;
    fld_len = sizeof text_name - 1;
    for (; p + key_len <= end; p += 1) {
        if (same(p, (u32)(uintptr_t)key, key_len)) {
            u32 q = p + key_len;
            fld = q;
            while (LD(q) != '"') q += 1;
            fld_len = q - fld;
            return;
        }
    }
}

__attribute__((export_name("process"))) int64_t process(int32_t ptr, int32_t len) {
    u32 p = (u32)ptr, n = (u32)len, end = p + n;
    u32 sizes[4] = {n, n, 2 * n + 64, 2 * n + 64}, bufs[4];
    for (int idx = 0; idx < 4; idx += 1) {
        int32_t a = alloc((int32_t)sizes[idx]);
        if (a == 0) __builtin_trap(); /* out of memory: the batch fails naming the memory limit */
        bufs[idx] = (u32)a;
    }
    dec = bufs[0];
    nrm = bufs[1];
    msk = bufs[2];
    u32 start = bufs[3];
    out = start;
    u32 line = p;
    while (line < end && LD(line) != '\n') line += 1;
    read_config(p, line);
    line += 1;
    while (line < end) {
        line = record(line);
        put('\n');
        line += 1; /* past the '\n' */
    }
    u64 out_len = out - start;
    return (int64_t)(((u64)start << 32) | out_len);
}
