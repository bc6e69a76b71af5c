/* Book-ticker records to binary COPY tuples in C: hftdb.store.vector.add_tickers's packing and checks in one pass.
 *
 * pack_tickers(rows, record_type, has_e, has_u, ids_from, min_ts, ts_max) returns
 * (tuples, ids, ok, lo, hi, ordered, rising), or None when some row is not one this function can take whole (below):
 *
 *   ids_from True: each row's symbol_id; a list: the rows' ids, one per row (resolved by the caller; the rows'
 *            own symbol_id is not read); a dict: the rows are named by exchange and symbol (symbol_id None) and
 *            ids_from[exchange][symbol] is the id (the symbol catalog's live names, hftdb.db.catalog.SymbolCatalog.
 *            names: the lookup runs here, in the same pass, instead of a tuple key per row in Python); false: the
 *            caller fills the ids in (symbol_id left 0);
 *   tuples   a bytearray of len(rows) tuples in the layout of hftdb.wire.books.LAYOUTS[(has_e, has_u)] (field count
 *            and lengths included);
 *   ids      the rows' symbol ids as a list (ids_from true, a list or a dict), else None;
 *   ok       whether every row passes the per-row writer's value checks (hftdb.wire.rules.book_fits, and min_ts <= recv_ts
 *            <= ts_max): when it is false the caller's numpy checks find the rows and their reasons;
 *   lo, hi   the smallest and largest recv_ts; ordered: whether recv_ts never decreases along the rows;
 *   rising   whether recv_ts strictly increases along the rows (then no row can repeat another: the caller's
 *            duplicate check is skipped; numpy took ~14 ns a row to tell, here it is one comparison).
 *
 * A row is taken when:
 *
 *   - its type is exactly record_type (hftdb.models.BookTicker);
 *   - bid_price, bid_qty, ask_price, ask_qty are floats (float subclasses, numpy.float64 among them, included);
 *   - recv_ts is an int, exchange_ts and update_id are ints where has_e / has_u say so and None where not,
 *     symbol_id (ids_from True) an int; every int within its column's range (int8, int4 for the id);
 *   - with ids_from a dict: symbol_id is None, and the exchange and symbol (exact str) are in it.
 *
 * None sends the call to the Python packing (struct), which takes what it can and leaves the rest to the per-row
 * path's rejections, as before. Fields are read straight from the record's slots, by
 * the offsets of its member descriptors (msgspec Structs keep their fields in slots), looked up once per type.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_copy_fast.h"


enum { F_SYMBOL_ID, F_RECV, F_EXCHANGE_TS, F_BID, F_BID_QTY, F_ASK, F_ASK_QTY, F_UPDATE_ID, F_EXCHANGE, F_SYMBOL,
       N_FIELDS };
static const char *FIELD_NAMES[N_FIELDS] = {"symbol_id", "recv_ts", "exchange_ts", "bid_price", "bid_qty",
                                            "ask_price", "ask_qty", "update_id", "exchange", "symbol"};

static PyTypeObject *cached_type = NULL; /* strong reference */
static Py_ssize_t offsets[N_FIELDS];

static int
load_offsets(PyTypeObject *type)
{
    if (type == cached_type) {
        return 0;
    }
    Py_ssize_t found[N_FIELDS];
    for (int k = 0; k < N_FIELDS; k++) {
        PyObject *descr = PyDict_GetItemString(type->tp_dict, FIELD_NAMES[k]); /* borrowed */
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "%s has no slot %s", type->tp_name, FIELD_NAMES[k]);
            return -1;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX && member->type != T_OBJECT) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", type->tp_name, FIELD_NAMES[k]);
            return -1;
        }
        found[k] = member->offset;
    }
    memcpy(offsets, found, sizeof offsets);
    Py_INCREF(type);
    Py_XSETREF(cached_type, type);
    return 0;
}

static inline PyObject *
field(PyObject *row, int k)
{
    return *(PyObject **)((char *)row + offsets[k]);
}

/* An exact int (not bool) that fits int64; 0 when it is not one. */
static inline int
as_int64(PyObject *v, long long *out)
{
    if (v == NULL || !PyLong_CheckExact(v)) {
        return 0;
    }
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);
    return !overflow;
}

PyDoc_STRVAR(pack_tickers_doc,
"pack_tickers(rows, record_type, has_e, has_u, ids_from, min_ts, ts_max) -> tuple | None\n"
"\n"
"(tuples, ids, ok, lo, hi, ordered, rising) for rows, or None when some row is not one this function takes (see the\n"
"module source).");

static PyObject *
pack_tickers(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7 || !PyList_Check(args[0]) || !PyType_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError,
                        "pack_tickers(rows: list, record_type: type, has_e, has_u, ids_from, min_ts, ts_max)");
        return NULL;
    }
    PyObject *rows = args[0];
    PyTypeObject *type = (PyTypeObject *)args[1];
    PyObject *names = PyDict_CheckExact(args[4]) ? args[4] : NULL;
    PyObject *given = PyList_CheckExact(args[4]) ? args[4] : NULL;
    int has_e = PyObject_IsTrue(args[2]), has_u = PyObject_IsTrue(args[3]);
    int with_id = (names != NULL || given != NULL) ? 1 : PyObject_IsTrue(args[4]);
    if (given != NULL && PyList_GET_SIZE(given) != PyList_GET_SIZE(args[0])) {
        PyErr_SetString(PyExc_ValueError, "pack_tickers: as many ids as rows");
        return NULL;
    }
    long long min_ts = PyLong_AsLongLong(args[5]), ts_max = PyLong_AsLongLong(args[6]);
    if (has_e < 0 || has_u < 0 || with_id < 0 || PyErr_Occurred() || load_offsets(type) < 0) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(rows);
    Py_ssize_t size = 2 + 8 + 12 + (has_e ? 12 : 4) + 4 * 12 + (has_u ? 12 : 4);
    PyObject *out = PyByteArray_FromStringAndSize(NULL, n * size);
    PyObject *ids = with_id ? PyList_New(n) : Py_NewRef(Py_None);
    if (out == NULL || ids == NULL) {
        Py_XDECREF(out);
        Py_XDECREF(ids);
        return NULL;
    }
    unsigned char *p = (unsigned char *)PyByteArray_AS_STRING(out);
    int ok = 1, ordered = 1, rising = 1;
    long long lo = 0, hi = 0;
    PyObject *last_exchange = NULL, *symbols = NULL; /* borrowed: names[last_exchange] */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (Py_TYPE(row) != type) {
            goto refuse;
        }
        long long sid = 0, recv, ex = 0, uid = 0;
        double prices[4];
        PyObject *id = given != NULL ? PyList_GET_ITEM(given, i) : field(row, F_SYMBOL_ID);
        if (names != NULL) {
            /* Named rows: the id from the catalog's names (a miss, or a row that has an id, goes the slow path). */
            PyObject *exchange = field(row, F_EXCHANGE), *symbol = field(row, F_SYMBOL);
            if (id != Py_None || exchange == NULL || !PyUnicode_CheckExact(exchange) || symbol == NULL
                || !PyUnicode_CheckExact(symbol)) {
                goto refuse;
            }
            if (exchange != last_exchange) {
                symbols = PyDict_GetItemWithError(names, exchange);
                if (symbols == NULL || !PyDict_CheckExact(symbols)) {
                    goto refuse_or_fail;
                }
                last_exchange = exchange;
            }
            id = PyDict_GetItemWithError(symbols, symbol);
            if (id == NULL) {
                goto refuse_or_fail;
            }
        }
        if (with_id && (!as_int64(id, &sid) || sid < INT32_MIN || sid > INT32_MAX)) {
            goto refuse;
        }
        if (!as_int64(field(row, F_RECV), &recv)) {
            goto refuse;
        }
        if (has_e ? !as_int64(field(row, F_EXCHANGE_TS), &ex) : field(row, F_EXCHANGE_TS) != Py_None) {
            goto refuse;
        }
        if (has_u ? !as_int64(field(row, F_UPDATE_ID), &uid) : field(row, F_UPDATE_ID) != Py_None) {
            goto refuse;
        }
        for (int k = 0; k < 4; k++) {
            PyObject *v = field(row, F_BID + k);
            if (v == NULL || !PyFloat_Check(v)) {
                goto refuse;
            }
            prices[k] = PyFloat_AS_DOUBLE(v);
        }
        /* Python's ints are unbounded: the shift by the PostgreSQL epoch must not wrap. */
        if (recv < INT64_MIN + PG_EPOCH_US || (has_e && ex < INT64_MIN + PG_EPOCH_US)) {
            goto refuse;
        }
        if (with_id) {
            PyList_SET_ITEM(ids, i, Py_NewRef(id));
        }
        /* hftdb.wire.rules.book_fits, with the receipt time (false for NaN) */
        if (ok && !(0.0 < prices[0] && prices[0] <= prices[2] && prices[2] < INFINITY && 0.0 < prices[1]
                    && prices[1] < INFINITY && 0.0 < prices[3] && prices[3] < INFINITY && min_ts <= recv
                    && recv <= ts_max && (!has_e || (min_ts <= ex && ex <= ts_max)))) {
            ok = 0;
        }
        if (i == 0) {
            lo = hi = recv;
        }
        else {
            if (recv <= hi) {
                rising = 0;
                if (recv < hi) {
                    ordered = 0;
                }
            }
            if (recv < lo) {
                lo = recv;
            }
            if (recv > hi) {
                hi = recv;
            }
        }
        p = put_u16(p, 8);
        p = put_u32(p, 4);
        p = put_u32(p, (uint32_t)(int32_t)sid);
        p = put_u32(p, 8);
        p = put_u64(p, (uint64_t)(recv - PG_EPOCH_US));
        if (has_e) {
            p = put_u32(p, 8);
            p = put_u64(p, (uint64_t)(ex - PG_EPOCH_US));
        }
        else {
            p = put_u32(p, UINT32_MAX); /* -1: NULL */
        }
        for (int k = 0; k < 4; k++) {
            uint64_t bits;
            memcpy(&bits, &prices[k], sizeof bits);
            p = put_u32(p, 8);
            p = put_u64(p, bits);
        }
        if (has_u) {
            p = put_u32(p, 8);
            p = put_u64(p, (uint64_t)uid);
        }
        else {
            p = put_u32(p, UINT32_MAX);
        }
    }
    return Py_BuildValue("(NNOLLOO)", out, ids, ok ? Py_True : Py_False, lo, hi, ordered ? Py_True : Py_False,
                         rising ? Py_True : Py_False);
refuse_or_fail:
    if (PyErr_Occurred()) { /* a key whose hash or comparison raised */
        Py_DECREF(out);
        Py_DECREF(ids);
        return NULL;
    }
refuse:
    Py_DECREF(out);
    Py_DECREF(ids);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(cached_ids_doc,
"cached_ids(rows, record_type, names) -> list | None\n"
"\n"
"The ids of rows that are all record_type named by exchange and symbol (symbol_id None, exact str names) with an id\n"
"in names[exchange][symbol] (the lookup pack_tickers makes with a dict ids_from), or None when some row is not. A\n"
"huge call looks its names up once with it, then packs slice by slice with the ids (a list ids_from).");

/* 1 when every row is named by a cached name (its id stored in ids[i]), 0 when one is not, -1 with an exception
 * set. */
static int
check_names(PyObject *rows, PyTypeObject *type, PyObject *names, PyObject *ids)
{
    PyObject *last_exchange = NULL, *symbols = NULL; /* borrowed: names[last_exchange] */
    Py_ssize_t n = PyList_GET_SIZE(rows);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *row = PyList_GET_ITEM(rows, i);
        if (Py_TYPE(row) != type) {
            return 0;
        }
        PyObject *exchange = field(row, F_EXCHANGE), *symbol = field(row, F_SYMBOL);
        if (field(row, F_SYMBOL_ID) != Py_None || exchange == NULL || !PyUnicode_CheckExact(exchange)
            || symbol == NULL || !PyUnicode_CheckExact(symbol)) {
            return 0;
        }
        if (exchange != last_exchange) {
            symbols = PyDict_GetItemWithError(names, exchange);
            if (symbols == NULL || !PyDict_CheckExact(symbols)) {
                return PyErr_Occurred() ? -1 : 0;
            }
            last_exchange = exchange;
        }
        PyObject *id = PyDict_GetItemWithError(symbols, symbol);
        if (id == NULL) {
            return PyErr_Occurred() ? -1 : 0;
        }
        PyList_SET_ITEM(ids, i, Py_NewRef(id));
    }
    return 1;
}

static PyObject *
cached_ids(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3 || !PyList_Check(args[0]) || !PyType_Check(args[1]) || !PyDict_CheckExact(args[2])) {
        PyErr_SetString(PyExc_TypeError, "cached_ids(rows: list, record_type: type, names: dict)");
        return NULL;
    }
    if (load_offsets((PyTypeObject *)args[1]) < 0) {
        return NULL;
    }
    /* (On a miss the list is freed half-filled: a list's items are released with Py_XDECREF, NULLs included, as
     * pack_tickers's ids are. Nothing in the pass runs Python code that could resize the rows' list: the names'
     * keys and the rows' names are exact str, hashed and compared in C.) */
    PyObject *ids = PyList_New(PyList_GET_SIZE(args[0]));
    if (ids == NULL) {
        return NULL;
    }
    int found = check_names(args[0], (PyTypeObject *)args[1], args[2], ids);
    if (found <= 0) {
        Py_DECREF(ids);
        if (found < 0) {
            return NULL;
        }
        Py_RETURN_NONE;
    }
    return ids;
}

static PyMethodDef methods[] = {
    {"pack_tickers", (PyCFunction)(void (*)(void))pack_tickers, METH_FASTCALL, pack_tickers_doc},
    {"cached_ids", (PyCFunction)(void (*)(void))cached_ids, METH_FASTCALL, cached_ids_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_vector_fast", "Book-ticker records to binary COPY tuples in C (see the source).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__vector_fast(void)
{
    return PyModule_Create(&module);
}
