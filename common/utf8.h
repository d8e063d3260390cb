/* UTF-8 text in fixed buffers: sanitising untrusted bytes, cutting on character boundaries. */
#ifndef COFI_UTF8_H
#define COFI_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* Copies the n bytes at src (NUL bytes included: n, not a NUL, ends the input) into dst, a
 * buffer of dstlen bytes, as valid UTF-8 without control characters, and NUL-terminates it:
 *   - every ill-formed sequence becomes U+FFFD (EF BF BD), one per maximal ill-formed subpart
 *     (Unicode's "substitution of maximal subparts"): a byte that cannot lead (0x80..0xC1,
 *     0xF5..0xFF), a lead not followed by the continuation bytes it needs, an overlong
 *     encoding, a surrogate (U+D800..U+DFFF), a code point above U+10FFFF, a sequence cut
 *     short by the end of the input;
 *   - the C0 controls (0x00..0x1F), DEL (0x7F) and the C1 controls (U+0080..U+009F) become a
 *     space (so a line break or a terminal escape never reaches a log line or an API field);
 *   - the output stops before the first character that would not fit with the NUL, so it
 *     is never cut inside a character.
 * src may be NULL when n is 0. With dstlen == 0 nothing is written. dst and src must not
 * overlap. Returns the length written, without the NUL (always < dstlen when dstlen > 0).
 * Can't fail. */
size_t utf8_sanitize(char *dst, size_t dstlen, const char *src, size_t n);

/* True when the n bytes at s are well-formed UTF-8 (NUL and control characters count as
 * well-formed). s may be NULL when n is 0. Can't fail. */
bool utf8_is_valid(const char *s, size_t n);

/* The length of the longest prefix of the NUL-terminated string s that is at most maxbytes
 * long and does not end inside a character: strlen(s) when that is <= maxbytes, otherwise
 * maxbytes less the bytes of a character the cut would split. When s is valid UTF-8 so is
 * the prefix. Reads at most maxbytes + 1 bytes of s. Can't fail. */
size_t utf8_cut(const char *s, size_t maxbytes);

/* snprintf into dst (dstlen bytes) that cuts on a character boundary: when the formatted
 * text does not fit, dst holds its longest prefix that fits with the NUL and does not end
 * inside a character (whole characters of valid UTF-8 arguments are kept or dropped, never
 * split). Returns the length written, without the NUL (not the length the full text would
 * have had); 0 with dst "" on an encoding error. With dstlen == 0 nothing is written and 0
 * is returned. Does not sanitise: pass untrusted text through utf8_sanitize first. */
size_t utf8_snprintf(char *dst, size_t dstlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
