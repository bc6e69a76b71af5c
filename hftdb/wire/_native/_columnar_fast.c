/* Packed latest rows to records in C: hftdb.read.columnar.PackedRows.decode without a Python pass per column.
 *
 * decode_packed(buf, kinds, bits, record_type, exchange, exchange_of, symbol_of) -> list
 *
 * buf holds rows of 2 + len(kinds) big-endian 8-byte words (see migrations/0002_latest_packed.up.sql): the
 * symbol id, a NULL bitmask, then the record's fields after (exchange, symbol) in its positional order. kinds[i]
 * is 'f' (float8) or 'i' (int8); bits[i] is the field's NULL bit, or 0 when it is never NULL. Each record is
 * record_type(exchange_name, symbol, *fields, symbol_id), where exchange_name is ``exchange`` when given (not
 * None) and exchange_of[symbol_id] otherwise, and symbol is symbol_of[symbol_id]: KeyError for an id missing from
 * a map, as the Python decoder raises, so that the caller can resolve the ids and decode again.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_copy_fast.h"

#define MAX_FIELDS 16

/* One int object per symbol id, shared by every record that carries it (ints are immutable): a record then costs
 * one allocation fewer. Ids are serial int4 values, so a table indexed by id stays small; ids past ID_CACHE_MAX, or
 * a table that cannot grow, get a fresh int as before. Kept for the life of the process, as the symbol caches are. */
#define ID_CACHE_MAX (1 << 20)
static PyObject **id_objects;
static Py_ssize_t id_capacity;

static PyObject *
id_object(uint64_t id)
{
    if (id >= ID_CACHE_MAX) {
        return PyLong_FromLongLong((long long)id); /* negative ids too, as int8 */
    }
    if ((Py_ssize_t)id >= id_capacity) {
        Py_ssize_t capacity = id_capacity ? id_capacity : 4096;
        while (capacity <= (Py_ssize_t)id) {
            capacity *= 2;
        }
        PyObject **grown = PyMem_Realloc(id_objects, (size_t)capacity * sizeof(PyObject *));
        if (grown == NULL) {
            return PyLong_FromLongLong((long long)id);
        }
        memset(grown + id_capacity, 0, (size_t)(capacity - id_capacity) * sizeof(PyObject *));
        id_objects = grown;
        id_capacity = capacity;
    }
    PyObject *obj = id_objects[id];
    if (obj == NULL) {
        obj = id_objects[id] = PyLong_FromLongLong((long long)id);
        if (obj == NULL) {
            return NULL;
        }
    }
    return Py_NewRef(obj);
}

static PyObject *
lookup(PyObject *map, PyObject *key)
{
    PyObject *v = PyDict_GetItemWithError(map, key); /* borrowed */
    if (v == NULL && !PyErr_Occurred()) {
        PyErr_SetObject(PyExc_KeyError, key);
    }
    return v;
}

PyDoc_STRVAR(decode_packed_doc,
"decode_packed(buf, kinds, bits, record_type, exchange, exchange_of, symbol_of) -> list\n"
"\n"
"The records of packed latest rows (see the module source).");

static PyObject *
decode_packed(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 7 || !PyBytes_Check(args[1]) || !PyTuple_Check(args[2]) || !PyDict_Check(args[5])
        || !PyDict_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError,
                        "decode_packed(buf, kinds: bytes, bits: tuple, record_type, exchange, exchange_of: dict, "
                        "symbol_of: dict)");
        return NULL;
    }
    PyObject *record_type = args[3], *exchange = args[4], *exchange_of = args[5], *symbol_of = args[6];
    const char *kinds = PyBytes_AS_STRING(args[1]);
    Py_ssize_t nfields = PyBytes_GET_SIZE(args[1]);
    if (nfields > MAX_FIELDS || PyTuple_GET_SIZE(args[2]) != nfields) {
        PyErr_SetString(PyExc_ValueError, "decode_packed(): kinds and bits differ in length, or too many fields");
        return NULL;
    }
    uint64_t bits[MAX_FIELDS];
    for (Py_ssize_t k = 0; k < nfields; k++) {
        if (kinds[k] != 'f' && kinds[k] != 'i') {
            PyErr_SetString(PyExc_ValueError, "decode_packed(): a kind is 'f' or 'i'");
            return NULL;
        }
        bits[k] = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(args[2], k));
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Py_ssize_t width = 8 * (2 + nfields);
    PyObject *out = NULL;
    if (view.len % width) {
        PyErr_Format(PyExc_ValueError, "packed latest rows: %zd bytes is not a multiple of %zd", view.len, width);
        goto done;
    }
    Py_ssize_t n = view.len / width;
    out = PyList_New(n);
    if (out == NULL) {
        goto done;
    }
    const unsigned char *p = view.buf;
    PyObject *values[MAX_FIELDS + 3];
    for (Py_ssize_t i = 0; i < n; i++, p += width) {
        PyObject *sid = id_object(get_u64(p));
        if (sid == NULL) {
            goto fail;
        }
        uint64_t nulls = get_u64(p + 8);
        PyObject *name = exchange != Py_None ? exchange : lookup(exchange_of, sid);
        PyObject *symbol = name == NULL ? NULL : lookup(symbol_of, sid);
        if (symbol == NULL) {
            Py_DECREF(sid);
            goto fail;
        }
        values[0] = name;
        values[1] = symbol;
        Py_ssize_t made = 0;
        for (Py_ssize_t k = 0; k < nfields; k++, made++) {
            uint64_t word = get_u64(p + 16 + 8 * k);
            PyObject *v;
            if (nulls & bits[k]) {
                v = Py_NewRef(Py_None);
            }
            else if (kinds[k] == 'f') {
                double d;
                memcpy(&d, &word, sizeof d);
                v = PyFloat_FromDouble(d);
            }
            else {
                v = PyLong_FromLongLong((long long)word);
            }
            if (v == NULL) {
                break;
            }
            values[2 + k] = v;
        }
        PyObject *row = NULL;
        if (made == nfields) {
            values[2 + nfields] = sid;
            row = PyObject_Vectorcall(record_type, values, 3 + nfields, NULL);
        }
        for (Py_ssize_t k = 0; k < made; k++) {
            Py_DECREF(values[2 + k]);
        }
        Py_DECREF(sid);
        if (row == NULL) {
            goto fail;
        }
        PyList_SET_ITEM(out, i, row);
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef methods[] = {
    {"decode_packed", (PyCFunction)(void (*)(void))decode_packed, METH_FASTCALL, decode_packed_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_columnar_fast", "Packed latest rows to records in C (see the source).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__columnar_fast(void)
{
    return PyModule_Create(&module);
}
