/* Big-endian writers for binary COPY tuples, shared by hftdb's C hot paths (header only). */
#ifndef HFTDB_COPY_FAST_H
#define HFTDB_COPY_FAST_H

#include <stdint.h>

#define PG_EPOCH_US 946684800000000LL /* Unix µs of 2000-01-01, PostgreSQL's epoch */

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
    for (int k = 3; k >= 0; k--) {
        *p++ = (unsigned char)(v >> (8 * k));
    }
    return p;
}

static inline unsigned char *
put_u64(unsigned char *p, uint64_t v)
{
    for (int k = 7; k >= 0; k--) {
        *p++ = (unsigned char)(v >> (8 * k));
    }
    return p;
}

#endif
