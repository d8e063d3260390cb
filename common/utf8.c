/* UTF-8 in fixed buffers: well-formedness checks, sanitising copies, boundary-safe cuts. */
#include "common/utf8.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* What decode() reports for an ill-formed sequence. */
#define UTF8_ILL_FORMED UINT32_MAX

/* The replacement character U+FFFD in UTF-8. */
static const char replacement[3] = {'\xEF', '\xBF', '\xBD'};

/* Decodes the character at s (n >= 1 bytes available) into *cp and returns the bytes it
 * takes. For an ill-formed sequence *cp is UTF8_ILL_FORMED and the return is the length of
 * its maximal subpart (at least 1): the bytes that could still have begun a character. The
 * ranges are those of Unicode's table 3-7 (well-formed byte sequences). */
static size_t decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char b = s[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    size_t need;
    uint32_t v;
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        need = 1;
        v = b & 0x1Fu;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        v = b & 0x0Fu;
        if (b == 0xE0) {
            lo = 0xA0; /* below: overlong */
        } else if (b == 0xED) {
            hi = 0x9F; /* above: surrogates */
        }
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        v = b & 0x07u;
        if (b == 0xF0) {
            lo = 0x90; /* below: overlong */
        } else if (b == 0xF4) {
            hi = 0x8F; /* above: beyond U+10FFFF */
        }
    } else {
        *cp = UTF8_ILL_FORMED; /* a continuation byte, C0, C1 or F5..FF */
        return 1;
    }
    for (size_t i = 1; i <= need; i++) {
        if (i >= n || s[i] < lo || s[i] > hi) {
            *cp = UTF8_ILL_FORMED;
            return i;
        }
        v = (v << 6) | (s[i] & 0x3Fu);
        lo = 0x80;
        hi = 0xBF;
    }
    *cp = v;
    return need + 1;
}

static bool is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
}

size_t utf8_sanitize(char *dst, size_t dstlen, const char *src, size_t n)
{
    if (dstlen == 0) {
        return 0;
    }
    const unsigned char *s = (const unsigned char *)src;
    size_t out = 0;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t used = decode(s + i, n - i, &cp);
        const char *put = src + i;
        size_t len = used;
        if (cp == UTF8_ILL_FORMED) {
            put = replacement;
            len = sizeof replacement;
        } else if (is_control(cp)) {
            put = " ";
            len = 1;
        }
        if (len >= dstlen - out) {
            break; /* no room for it and the NUL */
        }
        memcpy(dst + out, put, len);
        out += len;
        i += used;
    }
    dst[out] = '\0';
    return out;
}

bool utf8_is_valid(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        i += decode(u + i, n - i, &cp);
        if (cp == UTF8_ILL_FORMED) {
            return false;
        }
    }
    return true;
}

/* The length of s[0..n) without a last character that begins in it but does not end in it.
 * Input that is not UTF-8 there is left as it is. */
static size_t drop_split_tail(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t cont = 0;
    while (cont < 3 && cont < n && (u[n - 1 - cont] & 0xC0u) == 0x80u) {
        cont++;
    }
    if (cont == n) {
        return n;
    }
    unsigned char lead = u[n - 1 - cont];
    size_t want;
    if (lead >= 0xC0 && lead <= 0xDF) {
        want = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        want = 3;
    } else if (lead >= 0xF0 && lead <= 0xF7) {
        want = 4;
    } else {
        return n; /* ASCII or a stray continuation byte: nothing split here */
    }
    if (cont + 1 < want) {
        return n - 1 - cont;
    }
    return n;
}

size_t utf8_cut(const char *s, size_t maxbytes)
{
    size_t len = strnlen(s, maxbytes);
    if (len < maxbytes || s[maxbytes] == '\0') {
        return len;
    }
    return drop_split_tail(s, maxbytes);
}

size_t utf8_snprintf(char *dst, size_t dstlen, const char *fmt, ...)
{
    if (dstlen == 0) {
        return 0;
    }
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(dst, dstlen, fmt, ap);
    va_end(ap);
    if (r < 0) {
        dst[0] = '\0';
        return 0;
    }
    if ((size_t)r < dstlen) {
        return (size_t)r;
    }
    size_t len = drop_split_tail(dst, dstlen - 1);
    dst[len] = '\0';
    return len;
}
