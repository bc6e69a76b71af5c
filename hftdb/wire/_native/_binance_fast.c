/* The Binance USD-M bookTicker hot path in C: a socket read's frames to BookTicker rows and binary COPY tuples.
 *
 * hftdb.exchanges.parse_binance.BinanceParser.book_read calls book_read() below first and finishes in Python
 * whatever it hands back. This module takes a frame only when every step is certain:
 *
 *   - the frame is bytes holding exactly one JSON object {"stream": "...", "data": {...}}, each key once, in any
 *     order, whitespace where JSON allows it;
 *   - data holds "e":"bookTicker", "u" and "E" (JSON integers, at most 18 digits, u not negative: the update
 *     ids the Python path admits are 0 to 2**63 - 1), "s" (a non-empty string),
 *     "b" "B" "a" "A" (strings holding a plain JSON number: digits, an optional fraction, no sign, no exponent),
 *     and optionally "T" (a JSON integer, not stored); no other key;
 *   - no string has an escape, a control character or a non-ASCII byte;
 *   - E is a time in milliseconds, the quote passes the per-row writer's checks (hftdb.wire.rules.book_fits) and the
 *     symbol has an integer id in the parser's map that fits int4.
 *
 * At the first frame that is anything else it stops and returns that frame's index; the Python loop then handles
 * the frame (decode errors, rejection reasons, symbol registration, admission) exactly as it always did, and calls
 * back in for the rest. So this module never decides anything the Python path would decide differently: it is a
 * strict subset of it. Prices are converted by PyOS_string_to_double, the function behind float(text), so they
 * are the same correctly rounded doubles. A test runs generated, recorded and hostile frames through both and
 * compares rows, tuples, counts and admission state.
 *
 * For each frame taken, in order: a frame whose update id is not above last_ids[symbol] is counted as a
 * duplicate and dropped; otherwise last_ids[symbol] = u, the COPY tuple (hftdb.wire.books.LAYOUT, field counts and
 * lengths included) is appended to buf and BookTicker(exchange, symbol, b, B, a, A, recv_ts, E * 1000, u, sid)
 * to rows.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_copy_fast.h"

#define MS_BELOW 100000000000000LL /* below this an event time is in ms (parsing.to_us) */
#define TUPLE_SIZE 94              /* 2 + (4 + 4) + 7 * (4 + 8) */
#define MAX_NUMBER 63              /* longest price text taken here */

typedef struct {
    const char *symbol;
    Py_ssize_t symbol_len;
    long long u;
    long long event_time;
    double prices[4]; /* b, B, a, A */
} Book;

static inline const char *
skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
        p++;
    }
    return p;
}

/* A JSON string of printable ASCII without escapes; p at its opening quote. */
static const char *
read_string(const char *p, const char *end, const char **s, Py_ssize_t *n)
{
    if (p >= end || *p != '"') {
        return NULL;
    }
    const char *start = ++p;
    while (p < end) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            *s = start;
            *n = p - start;
            return p + 1;
        }
        if (c == '\\' || c < 0x20 || c >= 0x80) {
            return NULL;
        }
        p++;
    }
    return NULL;
}

/* A JSON integer -?(0|[1-9][0-9]*) of at most 18 digits, not the start of a fraction or exponent. */
static const char *
read_int(const char *p, const char *end, long long *out)
{
    int negative = 0;
    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    const char *start = p;
    if (p >= end || *p < '0' || *p > '9') {
        return NULL;
    }
    if (*p == '0') {
        p++;
    }
    else {
        while (p < end && *p >= '0' && *p <= '9') {
            p++;
        }
    }
    if (p - start > 18) {
        return NULL;
    }
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E' || (*p >= '0' && *p <= '9'))) {
        return NULL;
    }
    long long v = 0;
    for (const char *q = start; q < p; q++) {
        v = v * 10 + (*q - '0');
    }
    *out = negative ? -v : v;
    return p;
}

static const double POW10[16] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
                                 1e15};

/* A string holding (0|[1-9][0-9]*)(\.[0-9]+)? as the double float() gives for it. */
static const char *
read_price(const char *p, const char *end, double *out)
{
    const char *s;
    Py_ssize_t n;
    p = read_string(p, end, &s, &n);
    if (p == NULL || n == 0 || n > MAX_NUMBER) {
        return NULL;
    }
    Py_ssize_t k = 0;
    if (s[0] == '0') {
        k = 1;
    }
    else {
        while (k < n && s[k] >= '0' && s[k] <= '9') {
            k++;
        }
        if (k == 0) {
            return NULL;
        }
    }
    if (k < n) {
        if (s[k] != '.' || k + 1 == n) {
            return NULL;
        }
        for (Py_ssize_t j = k + 1; j < n; j++) {
            if (s[j] < '0' || s[j] > '9') {
                return NULL;
            }
        }
    }
    /* Clinger's fast path, exact: at most 15 significant digits make an integer below 2**53, and 10**k for
     * k <= 22 is a double too, so one IEEE division gives the correctly rounded quotient, which is what
     * float(text) gives. Anything longer goes to PyOS_string_to_double (slower: ~150 ns a call). */
    Py_ssize_t digits = n - (k < n ? 1 : 0);
    if (digits <= 15) {
        int64_t mantissa = 0;
        for (Py_ssize_t j = 0; j < n; j++) {
            if (s[j] != '.') {
                mantissa = mantissa * 10 + (s[j] - '0');
            }
        }
        *out = (double)mantissa / POW10[k < n ? n - k - 1 : 0];
        return p;
    }
    char text[MAX_NUMBER + 1];
    memcpy(text, s, (size_t)n);
    text[n] = '\0';
    char *stop = NULL;
    double v = PyOS_string_to_double(text, &stop, NULL);
    if (v == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return NULL;
    }
    if (stop != text + n) {
        return NULL;
    }
    *out = v;
    return p;
}

enum { K_E = 1, K_U = 2, K_S = 4, K_B = 8, K_BQ = 16, K_A = 32, K_AQ = 64, K_T = 128, K_TIME = 256 };
#define K_REQUIRED (K_E | K_U | K_S | K_B | K_BQ | K_A | K_AQ | K_TIME)

static const char *
read_data(const char *p, const char *end, Book *book)
{
    if (p >= end || *p != '{') {
        return NULL;
    }
    p = skip_ws(p + 1, end);
    int seen = 0;
    for (;;) {
        const char *key;
        Py_ssize_t key_len;
        p = read_string(p, end, &key, &key_len);
        if (p == NULL || key_len != 1) {
            return NULL;
        }
        p = skip_ws(p, end);
        if (p >= end || *p != ':') {
            return NULL;
        }
        p = skip_ws(p + 1, end);
        int bit;
        switch (key[0]) {
        case 'e': {
            const char *s;
            Py_ssize_t n;
            bit = K_E;
            p = read_string(p, end, &s, &n);
            if (p == NULL || n != 10 || memcmp(s, "bookTicker", 10) != 0) {
                return NULL;
            }
            break;
        }
        case 'u':
            bit = K_U;
            p = read_int(p, end, &book->u);
            /* A negative id is refused by the Python path (bad_update_id); 18 digits keep it below 2**63. */
            if (p != NULL && book->u < 0) {
                return NULL;
            }
            break;
        case 's':
            bit = K_S;
            p = read_string(p, end, &book->symbol, &book->symbol_len);
            if (p != NULL && book->symbol_len == 0) {
                return NULL;
            }
            break;
        case 'b':
            bit = K_B;
            p = read_price(p, end, &book->prices[0]);
            break;
        case 'B':
            bit = K_BQ;
            p = read_price(p, end, &book->prices[1]);
            break;
        case 'a':
            bit = K_A;
            p = read_price(p, end, &book->prices[2]);
            break;
        case 'A':
            bit = K_AQ;
            p = read_price(p, end, &book->prices[3]);
            break;
        case 'T': {
            long long ignored;
            bit = K_T;
            p = read_int(p, end, &ignored);
            break;
        }
        case 'E':
            bit = K_TIME;
            p = read_int(p, end, &book->event_time);
            break;
        default:
            return NULL;
        }
        if (p == NULL || (seen & bit)) {
            return NULL;
        }
        seen |= bit;
        p = skip_ws(p, end);
        if (p >= end) {
            return NULL;
        }
        if (*p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (*p == '}') {
            return (seen & K_REQUIRED) == K_REQUIRED ? p + 1 : NULL;
        }
        return NULL;
    }
}

static int
read_frame(const char *p, const char *end, Book *book)
{
    p = skip_ws(p, end);
    if (p >= end || *p != '{') {
        return 0;
    }
    p = skip_ws(p + 1, end);
    int seen_stream = 0, seen_data = 0;
    for (;;) {
        const char *key;
        Py_ssize_t key_len;
        p = read_string(p, end, &key, &key_len);
        if (p == NULL) {
            return 0;
        }
        p = skip_ws(p, end);
        if (p >= end || *p != ':') {
            return 0;
        }
        p = skip_ws(p + 1, end);
        if (key_len == 6 && memcmp(key, "stream", 6) == 0 && !seen_stream) {
            const char *s;
            Py_ssize_t n;
            seen_stream = 1;
            p = read_string(p, end, &s, &n);
        }
        else if (key_len == 4 && memcmp(key, "data", 4) == 0 && !seen_data) {
            seen_data = 1;
            p = read_data(p, end, book);
        }
        else {
            return 0;
        }
        if (p == NULL) {
            return 0;
        }
        p = skip_ws(p, end);
        if (p >= end) {
            return 0;
        }
        if (*p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (*p == '}') {
            p = skip_ws(p + 1, end);
            return p == end && seen_data;
        }
        return 0;
    }
}

static inline unsigned char *
put_f64(unsigned char *p, double d)
{
    uint64_t v;
    memcpy(&v, &d, sizeof v);
    p = put_u32(p, 8);
    return put_u64(p, v);
}

static void
pack_tuple(unsigned char *p, const Book *book, long sid, long long recv_pg, long long exchange_pg)
{
    p = put_u16(p, 8);
    p = put_u32(p, 4);
    p = put_u32(p, (uint32_t)(int32_t)sid);
    p = put_u32(p, 8);
    p = put_u64(p, (uint64_t)recv_pg);
    p = put_u32(p, 8);
    p = put_u64(p, (uint64_t)exchange_pg);
    for (int k = 0; k < 4; k++) {
        p = put_f64(p, book->prices[k]);
    }
    p = put_u32(p, 8);
    put_u64(p, (uint64_t)book->u);
}

static inline int
fits(const Book *book, long long exchange_ts, long long min_ts, long long ts_max)
{
    /* hftdb.wire.rules.book_fits */
    double bid = book->prices[0], bid_qty = book->prices[1], ask = book->prices[2], ask_qty = book->prices[3];
    return 0.0 < bid && bid <= ask && ask < INFINITY && 0.0 < bid_qty && bid_qty < INFINITY && 0.0 < ask_qty
           && ask_qty < INFINITY && min_ts <= exchange_ts && exchange_ts <= ts_max;
}

/* Append the row; 0, or -1 with an exception set. */
static int
take(const Book *book, PyObject *symbol, PyObject *u, long sid, PyObject *sid_obj, long long exchange_ts,
     long long recv_pg, PyObject *recv_obj, PyObject *rows, PyObject *buf, PyObject *book_type, PyObject *exchange)
{
    Py_ssize_t size = PyByteArray_GET_SIZE(buf);
    if (PyByteArray_Resize(buf, size + TUPLE_SIZE) < 0) {
        return -1;
    }
    pack_tuple((unsigned char *)PyByteArray_AS_STRING(buf) + size, book, sid, recv_pg, exchange_ts - PG_EPOCH_US);

    PyObject *values[10] = {exchange, symbol, NULL, NULL, NULL, NULL, recv_obj, NULL, u, sid_obj};
    int rc = -1;
    for (int k = 0; k < 4; k++) {
        if ((values[2 + k] = PyFloat_FromDouble(book->prices[k])) == NULL) {
            goto done;
        }
    }
    if ((values[7] = PyLong_FromLongLong(exchange_ts)) == NULL) {
        goto done;
    }
    PyObject *row = PyObject_Vectorcall(book_type, values, 10, NULL);
    if (row != NULL) {
        rc = PyList_Append(rows, row);
        Py_DECREF(row);
    }
done:
    for (int k = 2; k < 8; k++) {
        if (k != 6) {
            Py_XDECREF(values[k]);
        }
    }
    return rc;
}

static inline size_t
symbol_hash(const char *s, Py_ssize_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (Py_ssize_t k = 0; k < n; k++) {
        h = (h ^ (unsigned char)s[k]) * 1099511628211ULL;
    }
    return (size_t)(h ^ (h >> 29));
}

/* book_read's symbols, as str objects kept from one frame to the next: a feed has a few thousand symbols at most,
 * and a frame whose symbol is here reuses its str (its hash already computed, found in the dictionaries by
 * identity) instead of decoding and hashing a new one (~30 ns of a ~450 ns frame, measured). Direct-mapped by
 * the text's hash; a collision replaces the slot. The strings are exact ASCII str, immutable: reusing one gives
 * the same keys and row values as a new one. Held for the life of the process (at most SYMBOL_SLOTS of them). */
#define SYMBOL_SLOTS 4096 /* a power of two */
static PyObject *symbol_slots[SYMBOL_SLOTS];

/* A new reference to a str of s[:n] (ASCII), or NULL with an exception set. */
static PyObject *
symbol_str(const char *s, Py_ssize_t n)
{
    PyObject **slot = &symbol_slots[symbol_hash(s, n) & (SYMBOL_SLOTS - 1)];
    PyObject *cached = *slot;
    if (cached != NULL && PyUnicode_GET_LENGTH(cached) == n && memcmp(PyUnicode_DATA(cached), s, (size_t)n) == 0) {
        return Py_NewRef(cached);
    }
    PyObject *str = PyUnicode_DecodeASCII(s, n, NULL);
    if (str == NULL || PyObject_Hash(str) == -1) {
        Py_XDECREF(str);
        return NULL;
    }
    Py_XSETREF(*slot, Py_NewRef(str));
    return str;
}

PyDoc_STRVAR(book_read_doc,
"book_read(payloads, i, recv_ts, ts_max, last_ids, ids, rows, buf, book_type, exchange, min_ts) -> (i, duplicates)\n"
"\n"
"From payloads[i] on, take each USD-M bookTicker frame this module can take whole (see the module source):\n"
"admit it against last_ids, append its COPY tuple to buf and its row to rows. Stops at the first frame it\n"
"cannot take and returns its index (len(payloads) when all were taken) and the duplicates dropped.");

static PyObject *
book_read(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "book_read() takes 11 arguments");
        return NULL;
    }
    PyObject *payloads = args[0], *recv_obj = args[2], *last_ids = args[4], *ids = args[5], *rows = args[6];
    PyObject *buf = args[7], *book_type = args[8], *exchange = args[9];
    if (!PyList_Check(payloads) || !PyDict_Check(last_ids) || !PyDict_Check(ids) || !PyList_Check(rows)
        || !PyByteArray_Check(buf) || !PyLong_Check(recv_obj)) {
        PyErr_SetString(PyExc_TypeError, "book_read(): list, int, int, int, dict, dict, list, bytearray, ...");
        return NULL;
    }
    Py_ssize_t i = PyLong_AsSsize_t(args[1]);
    long long recv_ts = PyLong_AsLongLong(recv_obj);
    long long ts_max = PyLong_AsLongLong(args[3]);
    long long min_ts = PyLong_AsLongLong(args[10]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    long long recv_pg = recv_ts - PG_EPOCH_US;
    Py_ssize_t duplicates = 0;
    for (; i < PyList_GET_SIZE(payloads); i++) {
        PyObject *raw = PyList_GET_ITEM(payloads, i);
        if (!PyBytes_Check(raw)) {
            break;
        }
        Book book;
        const char *text = PyBytes_AS_STRING(raw);
        if (!read_frame(text, text + PyBytes_GET_SIZE(raw), &book)) {
            break;
        }
        if (book.event_time <= 0 || book.event_time >= MS_BELOW) {
            break;
        }
        long long exchange_ts = book.event_time * 1000;
        if (!fits(&book, exchange_ts, min_ts, ts_max)) {
            break;
        }
        PyObject *symbol = symbol_str(book.symbol, book.symbol_len);
        if (symbol == NULL) {
            return NULL;
        }
        PyObject *sid_obj = PyDict_GetItemWithError(ids, symbol); /* borrowed */
        int overflow = 0;
        long sid = 0;
        if (sid_obj != NULL && PyLong_CheckExact(sid_obj)) {
            sid = PyLong_AsLongAndOverflow(sid_obj, &overflow);
        }
        if (sid_obj == NULL || !PyLong_CheckExact(sid_obj) || overflow || sid < INT32_MIN || sid > INT32_MAX) {
            Py_DECREF(symbol);
            if (PyErr_Occurred()) {
                return NULL;
            }
            break; /* no id yet (the Python path resolves it), or one the tuple cannot hold */
        }
        Py_INCREF(sid_obj); /* held across calls that may run Python code */
        PyObject *last = PyDict_GetItemWithError(last_ids, symbol); /* borrowed */
        if (last != NULL) {
            long long last_u = PyLong_CheckExact(last) ? PyLong_AsLongLongAndOverflow(last, &overflow) : 0;
            if (!PyLong_CheckExact(last) || (last_u == -1 && PyErr_Occurred()) || overflow) {
                PyErr_Clear();
                Py_DECREF(symbol);
                Py_DECREF(sid_obj);
                break;
            }
            if (book.u <= last_u) {
                duplicates++;
                Py_DECREF(symbol);
                Py_DECREF(sid_obj);
                continue;
            }
        }
        else if (PyErr_Occurred()) {
            Py_DECREF(symbol);
            Py_DECREF(sid_obj);
            return NULL;
        }
        PyObject *u = PyLong_FromLongLong(book.u);
        int rc = u == NULL ? -1 : PyDict_SetItem(last_ids, symbol, u);
        if (rc == 0) {
            rc = take(&book, symbol, u, sid, sid_obj, exchange_ts, recv_pg, recv_obj, rows, buf, book_type, exchange);
        }
        Py_XDECREF(u);
        Py_DECREF(symbol);
        Py_DECREF(sid_obj);
        if (rc < 0) {
            return NULL;
        }
    }
    return Py_BuildValue("(nn)", i, duplicates);
}

/* bytes.strip()'s whitespace: what a replayed line loses at both ends before it is a frame. */
static inline int
line_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* book_scan's per-call memory of symbols: a block of a capture has a few hundred symbols and thousands of rows, so
 * each symbol's text is decoded, looked up in ids and last_ids once per call and admitted in C after that; the
 * update ids admitted are written back to last_ids before the call returns, whatever stopped it. Open addressing,
 * never emptied during a call: a symbol found once is found again at the same place; a symbol that finds no
 * room (or is longer than SCAN_SYMBOL) takes the dictionaries every time. */
#define SCAN_SLOTS 1024 /* a power of two */
#define SCAN_PROBES 8
#define SCAN_SYMBOL 40

typedef struct {
    PyObject *symbol; /* strong reference; NULL: the slot is empty */
    long long last_u; /* the symbol's last admitted update id, when has_last */
    long sid;
    int has_last;
    int dirty; /* last_u changed: write it back to last_ids */
    Py_ssize_t len;
    char text[SCAN_SYMBOL];
} ScanSlot;

/* Write the admitted ids back to last_ids and release the slots; 0, or -1 with an exception set (all released). */
static int
scan_release(ScanSlot *slots, PyObject *last_ids)
{
    int rc = 0;
    for (int k = 0; k < SCAN_SLOTS; k++) {
        ScanSlot *slot = &slots[k];
        if (slot->symbol == NULL) {
            continue;
        }
        if (slot->dirty && rc == 0) {
            PyObject *u = PyLong_FromLongLong(slot->last_u);
            if (u == NULL || PyDict_SetItem(last_ids, slot->symbol, u) < 0) {
                rc = -1;
            }
            Py_XDECREF(u);
        }
        Py_DECREF(slot->symbol);
    }
    PyMem_Free(slots);
    return rc;
}

/* The symbol's id and last admitted update id from the dictionaries, as book_read reads them.
 * 1: found (has_last says whether last_ids holds one); 0: hand the frame back; -1: an exception is set. */
static int
scan_lookup(PyObject *symbol, PyObject *ids, PyObject *last_ids, long *sid, long long *last_u, int *has_last)
{
    PyObject *sid_obj = PyDict_GetItemWithError(ids, symbol); /* borrowed */
    int overflow = 0;
    if (sid_obj == NULL) {
        return PyErr_Occurred() ? -1 : 0; /* no id yet: the Python path resolves it */
    }
    if (!PyLong_CheckExact(sid_obj)) {
        return 0;
    }
    *sid = PyLong_AsLongAndOverflow(sid_obj, &overflow);
    if (overflow || *sid < INT32_MIN || *sid > INT32_MAX) {
        return 0; /* an id the tuple cannot hold */
    }
    PyObject *last = PyDict_GetItemWithError(last_ids, symbol); /* borrowed */
    if (last == NULL) {
        if (PyErr_Occurred()) {
            return -1;
        }
        *has_last = 0;
        return 1;
    }
    if (!PyLong_CheckExact(last)) {
        return 0;
    }
    *last_u = PyLong_AsLongLongAndOverflow(last, &overflow);
    if ((*last_u == -1 && PyErr_Occurred()) || overflow) {
        PyErr_Clear();
        return 0;
    }
    *has_last = 1;
    return 1;
}

PyDoc_STRVAR(book_scan_doc,
"book_scan(data, start, end, recv_ts, ts_max, last_ids, ids, buf, min_ts) -> (pos, frames, duplicates)\n"
"\n"
"The lines of data[start:end] (newline-separated, each stripped as by bytes.strip; blank lines are no frame)\n"
"from start on: each USD-M bookTicker frame this module can take whole (see the module source) is admitted\n"
"against last_ids and its COPY tuple appended to buf; no record is built. Stops at the first line it cannot\n"
"take and returns its offset (end when all were taken), the frames taken (duplicates included) and the\n"
"duplicates dropped. last_ids holds every id admitted when it returns.");

static PyObject *
book_scan(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError, "book_scan() takes 9 arguments");
        return NULL;
    }
    PyObject *data = args[0], *last_ids = args[5], *ids = args[6], *buf = args[7];
    if (!PyBytes_Check(data) || !PyDict_Check(last_ids) || !PyDict_Check(ids) || !PyByteArray_Check(buf)) {
        PyErr_SetString(PyExc_TypeError, "book_scan(): bytes, int, int, int, int, dict, dict, bytearray, int");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    long long recv_ts = PyLong_AsLongLong(args[3]);
    long long ts_max = PyLong_AsLongLong(args[4]);
    long long min_ts = PyLong_AsLongLong(args[8]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    ScanSlot *slots = PyMem_Calloc(SCAN_SLOTS, sizeof(ScanSlot));
    if (slots == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t size = PyBytes_GET_SIZE(data);
    if (end > size) {
        end = size;
    }
    if (pos < 0) {
        pos = 0;
    }
    const char *base = PyBytes_AS_STRING(data);
    long long recv_pg = recv_ts - PG_EPOCH_US;
    Py_ssize_t frames = 0, duplicates = 0;
    Py_ssize_t used = PyByteArray_GET_SIZE(buf), cap = used;
    int failed = 0;
    while (pos < end) {
        const char *line = base + pos;
        const char *nl = memchr(line, '\n', (size_t)(end - pos));
        const char *stop = nl != NULL ? nl : base + end;
        Py_ssize_t next = nl != NULL ? (nl - base) + 1 : end;
        while (line < stop && line_space(*line)) {
            line++;
        }
        while (stop > line && line_space(stop[-1])) {
            stop--;
        }
        if (line == stop) {
            pos = next; /* a blank line: no frame */
            continue;
        }
        Book book;
        if (!read_frame(line, stop, &book) || book.event_time <= 0 || book.event_time >= MS_BELOW) {
            break;
        }
        long long exchange_ts = book.event_time * 1000;
        if (!fits(&book, exchange_ts, min_ts, ts_max)) {
            break;
        }
        /* The symbol's slot: found, or taken now (an empty one on its probe path), or none (NULL). */
        ScanSlot *slot = NULL;
        if (book.symbol_len <= SCAN_SYMBOL) {
            size_t h = symbol_hash(book.symbol, book.symbol_len);
            for (int k = 0; k < SCAN_PROBES; k++) {
                ScanSlot *s = &slots[(h + (size_t)k) & (SCAN_SLOTS - 1)];
                if (s->symbol == NULL || (s->len == book.symbol_len && memcmp(s->text, book.symbol, book.symbol_len) == 0)) {
                    slot = s;
                    break;
                }
            }
        }
        long sid;
        long long last_u = 0;
        int has_last = 0;
        if (slot != NULL && slot->symbol != NULL) {
            sid = slot->sid;
            last_u = slot->last_u;
            has_last = slot->has_last;
        }
        else {
            PyObject *symbol = PyUnicode_DecodeASCII(book.symbol, book.symbol_len, NULL);
            if (symbol == NULL) {
                failed = 1;
                break;
            }
            int found = scan_lookup(symbol, ids, last_ids, &sid, &last_u, &has_last);
            if (found <= 0) {
                Py_DECREF(symbol);
                failed = found < 0;
                break;
            }
            if (slot != NULL) {
                slot->symbol = symbol; /* the slot keeps the reference */
                slot->sid = sid;
                slot->last_u = last_u;
                slot->has_last = has_last;
                slot->len = book.symbol_len;
                memcpy(slot->text, book.symbol, (size_t)book.symbol_len);
            }
            else if (!(has_last && book.u <= last_u)) {
                /* No slot: admitted in the dictionary itself. */
                PyObject *u = PyLong_FromLongLong(book.u);
                int rc = u == NULL ? -1 : PyDict_SetItem(last_ids, symbol, u);
                Py_XDECREF(u);
                Py_DECREF(symbol);
                if (rc < 0) {
                    failed = 1;
                    break;
                }
            }
            else {
                Py_DECREF(symbol);
            }
        }
        if (has_last && book.u <= last_u) {
            frames++;
            duplicates++;
            pos = next;
            continue;
        }
        if (used + TUPLE_SIZE > cap) {
            /* Room for the rest of the lines at one tuple per 64 bytes (a frame is longer), at least doubled. */
            Py_ssize_t want = used + TUPLE_SIZE * (2 + (end - pos) / 64);
            if (want < 2 * cap) {
                want = 2 * cap;
            }
            if (PyByteArray_Resize(buf, want) < 0) {
                failed = 1;
                break;
            }
            cap = want;
        }
        if (slot != NULL) {
            slot->last_u = book.u;
            slot->has_last = 1;
            slot->dirty = 1;
        }
        pack_tuple((unsigned char *)PyByteArray_AS_STRING(buf) + used, &book, sid, recv_pg, exchange_ts - PG_EPOCH_US);
        used += TUPLE_SIZE;
        frames++;
        pos = next;
    }
    /* The exception of a failed step, if any, survives the write-back and the shrink. */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (scan_release(slots, last_ids) < 0) {
        if (type == NULL) {
            PyErr_Fetch(&type, &value, &tb);
        }
        else {
            PyErr_Clear();
        }
        failed = 1;
    }
    if (cap != used) {
        PyByteArray_Resize(buf, used); /* a shrink: cannot fail */
    }
    PyErr_Restore(type, value, tb);
    if (failed) {
        return NULL;
    }
    return Py_BuildValue("(nnn)", pos, frames, duplicates);
}

static PyMethodDef methods[] = {
    {"book_read", (PyCFunction)(void (*)(void))book_read, METH_FASTCALL, book_read_doc},
    {"book_scan", (PyCFunction)(void (*)(void))book_scan, METH_FASTCALL, book_scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_binance_fast", "The Binance USD-M bookTicker hot path in C (see the source).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__binance_fast(void)
{
    return PyModule_Create(&module);
}
