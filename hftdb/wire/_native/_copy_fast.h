/* Big-endian readers and writers for binary COPY tuples and packed rows, shared by hftdb's C hot paths
 * (header only). On little-endian GCC/Clang each is one byte swap and one unaligned move; the byte loops they
 * replace stayed loops at -O2 (most of decode_packed's own time went to get_u64's). */
#ifndef HFTDB_COPY_FAST_H
#define HFTDB_COPY_FAST_H

#include <stdint.h>
#include <string.h>

#define PG_EPOCH_US 946684800000000LL /* Unix µs of 2000-01-01, PostgreSQL's epoch */

#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HFTDB_BE32(v) __builtin_bswap32(v)
#define HFTDB_BE64(v) __builtin_bswap64(v)
#elif defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define HFTDB_BE32(v) (v)
#define HFTDB_BE64(v) (v)
#endif

static inline unsigned char *
put_u16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
    return p + 2;
}

static inline unsigned char *
put_u32(unsigned char *p, uint32_t v)
{
#ifdef HFTDB_BE32
    v = HFTDB_BE32(v);
    memcpy(p, &v, 4);
    return p + 4;
#else
    for (int k = 3; k >= 0; k--) {
        *p++ = (unsigned char)(v >> (8 * k));
    }
    return p;
#endif
}

static inline unsigned char *
put_u64(unsigned char *p, uint64_t v)
{
#ifdef HFTDB_BE64
    v = HFTDB_BE64(v);
    memcpy(p, &v, 8);
    return p + 8;
#else
    for (int k = 7; k >= 0; k--) {
        *p++ = (unsigned char)(v >> (8 * k));
    }
    return p;
#endif
}

static inline uint64_t
get_u64(const unsigned char *p)
{
#ifdef HFTDB_BE64
    uint64_t v;
    memcpy(&v, p, 8);
    return HFTDB_BE64(v);
#else
    uint64_t v = 0;
    for (int k = 0; k < 8; k++) {
        v = (v << 8) | p[k];
    }
    return v;
#endif
}

#endif
