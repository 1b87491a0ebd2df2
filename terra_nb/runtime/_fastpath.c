/* The skeleton's hot path in C: CoExecutor.on_op's fast path (with ops.scan and _tail_ok),
 * CoExecutor._defer's common case (with PendingBlock.input), CoExecutor._take_run, and the calls
 * _on_op runs at once (metadata queries, passthrough calls).
 *
 * terra_nb/runtime/native.py compiles this file on first use (Python headers only, no torch
 * headers) and falls back to the Python path when it cannot. The Python code in coexec.py is
 * the reference: this file does exactly what it does, for the calls it can take, and hands
 * every other call to Python (``slow``) before it has changed anything.
 *
 * A FastPath object is installed as a TerraMode's ``__torch_function__`` (a bound method of the
 * mode, so torch's mode dispatch calls it directly). It reads and writes the same attributes as
 * the Python path: the executor's state and counters, the nodes' and pending blocks' slots, the
 * futures' instance dicts.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <structmember.h>
#include <time.h>

#if PY_VERSION_HEX < 0x030B0000
#error "the native fast path needs Python 3.11 or newer"
#endif
#if PY_VERSION_HEX < 0x030C0000
#define ROOTS_VERSION(d) (((PyDictObject *)(d))->ma_version_tag)  /* changes with every change of d */
#endif

#define MAX_TENSORS 64  /* a call with more tensors goes to the Python path */

/* ---- names ---------------------------------------------------------------------------------- */

enum {
    S_state, S_mode, S_cursor, S_block, S_anchor, S_explicit_iterations, S_cell_token, S_op_counter,
    S_anchor_limit, S_anchor_first, S_ops_coexec, S_validated, S_deferred_total, S_max_block, S_root_codes, S_ok_parent,
    S_ok_lasti, S_ok_tail, S_graph, S_iter_index, S_validated_op, S_flush, S_advance, S_step,
    S_input, S_tn_src, S_tn_local,
    S_dtype, S_device, S_requires_grad, S_prop, S_shape, S_tn_numpy, S_slice, S_meta_funcs,
    S_passthrough, S_runner, S_inline_seconds, S_compiled, S_new_block, S_iter_blocks, S_block_ids, S_cell,
    S_func, S_pending, S_grad, S_setter, S_ran_now, S_captured, S_memory_epoch, S_is_contiguous, S_grad_objs, S_grad_entry, N_NAMES
};
static const char *NAMES[N_NAMES] = {
    "state", "mode", "cursor", "block", "anchor", "explicit_iterations",
    "_cell_token", "op_counter", "_anchor_limit", "_anchor_first", "ops_coexec", "_validated",
    "deferred_total", "max_block", "_root_codes", "_ok_parent", "_ok_lasti", "_ok_tail",
    "graph", "iter_index", "_validated_op", "flush", "_advance", "step",
    "input", "_tn_src", "_tn_local", "dtype", "device", "requires_grad", "prop",
    "shape", "_tn_numpy", "slice", "meta_funcs", "passthrough", "runner", "inline_seconds", "compiled", "_new_block", "iter_blocks", "block_ids", "cell",
    "func", "_pending", "grad", "setter", "_ran_now", "captured", "_memory_epoch", "is_contiguous", "_grad_objs", "_grad_entry",
};
static PyObject *str[N_NAMES];
/* The names above that are the executor's attributes (slots of its class). */
static const int EXECUTOR_SLOTS[] = {
    S_state, S_mode, S_cursor, S_block, S_anchor, S_explicit_iterations, S_cell_token, S_op_counter,
    S_anchor_limit, S_anchor_first, S_ops_coexec, S_validated, S_deferred_total, S_max_block, S_root_codes,
    S_ok_parent, S_ok_lasti, S_ok_tail, S_graph, S_iter_index, S_meta_funcs, S_passthrough, S_runner,
    S_compiled, S_iter_blocks, S_block_ids, S_cell, S_memory_epoch, S_grad_objs,
};
#define N_EXECUTOR_SLOTS ((int)(sizeof(EXECUTOR_SLOTS) / sizeof(EXECUTOR_SLOTS[0])))

/* Slots of Node and PendingBlock, read by offset (both classes define __slots__). */
enum {
    N_key, N_flat, N_grad, N_mask, N_tail, N_in_meta, N_kind, N_immediate, N_grad_op, N_barrier,
    N_sources, N_passed, N_alias, N_out_struct, N_out_meta, N_pool, N_count, N_succ, N_pred,
    N_cell_mark, N_seen_at, N_info, N_family, N_fast, N_hot, N_last_op, N_src_seen, N_raised, N_NSLOTS
};
static const char *NODE_SLOTS[N_NSLOTS] = {
    "key", "flat", "grad", "mask", "tail", "in_meta", "kind", "immediate", "grad_op", "barrier",
    "sources", "passed", "alias", "out_struct", "out_meta", "pool", "count", "succ", "pred",
    "cell_mark", "seen_at", "info", "family", "fast", "hot", "last_op", "src_seen", "raised",
};
/* Slots of FutureTensor. */
enum { U_meta, U_src, U_val, U_owner, U_blk, U_pooled, U_vidx, U_NSLOTS };
static const char *FUTURE_SLOTS[U_NSLOTS] = {"_tn_meta", "_tn_src", "_tn_val", "_tn_owner", "_tn_blk", "_tn_pooled", "_tn_vidx"};
enum { B_ops, B_inputs, B_input_ids, B_floats, B_futs, B_kind, B_NSLOTS };
static const char *BLOCK_SLOTS[B_NSLOTS] = {"ops", "inputs", "input_ids", "floats", "futs", "kind"};

#define N_MISSES 18
static const char *MISS_REASONS[N_MISSES] = {
    "not skeleton", "mode not auto", "no frame", "no cursor", "no successor here", "another code here",
    "no entries", "more than 64 tensors", "a mask not a frozenset", "unexpected slots",
    "no entry matched", "the anchor's function, run eagerly", "autocast on", "keyword arguments not in a dict",
    "saved-tensor hooks on", "inside a torch.func transform", "a Python function, run eagerly",
    "a dispatch mode of the program's on",
};
#define MISS(reason) do { fp->misses[reason]++; goto out; } while (0)

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *executor;      /* the CoExecutor */
    PyObject *slow;          /* the Python __torch_function__ path, bound to the mode */
    PyObject *node_type, *block_type, *future_type, *tensor_type, *info_type, *generator_type;
    PyObject *numpy_scalars;  /* ops.NUMPY_SCALARS: numpy's scalar types -> int or float */
    PyObject *size_type;     /* torch.Size: scanned as a tuple */
    PyObject *parameter_type;  /* nn.Parameter: with Tensor, the types whose metadata is 4 items */
    PyObject *skeleton, *auto_, *eager_, *op_kind, *effect_kind, *fetch_kind;  /* the constants the Python path compares */
    PyObject *grad_table[2][2];
    PyObject *tensor_struct, *none_struct, *external;
    PyObject *make_future;   /* executor._make_future(node, j, getter_src): a new future, into the pool */
    PyObject *build_out;     /* ops.build_out(structure, values) */
    PyObject *marker_t, *marker_f, *marker_g, *marker_fn, *marker_mut;  /* ops.T, F, G, FN and MUT */
    PyObject *no_scalars;    /* an empty list, never appended to */
    PyObject *is_grad_enabled, *is_inference, *any_autocast;
    PyObject *saved_hooks;   /* torch._C._autograd._top_saved_tensors_default_hooks */
    PyObject *functorch_level;  /* torch._C._functorch.maybe_current_level */
    PyObject *dispatch_modes;   /* torch._C._len_torch_dispatch_stack */
    PyObject *zero;             /* 0 */
    PyObject *run_meta;      /* coexec._run_meta(func, args, kwargs) */
    PyObject *grad_read;     /* coexec.GRAD_READ: a node's ``immediate`` when it reads a .grad */
    PyObject *check_index;   /* coexec.CHECK_INDEX: ... when its index may be out of range (Python checks it) */
    PyObject *shares_memory; /* CoExecutor._shares_python_memory */
    PyObject *check_view;    /* coexec.CHECK_VIEW: ... when it is a view in the program's try (Python checks its strides) */
    PyObject *check_scalars; /* coexec.CHECK_SCALARS: ... when its fed numbers may make it raise in the program's try (Python checks them) */
    PyObject *unfollowed;    /* coexec._UNFOLLOWED: the gradient table's object for a .grad it does not follow */
    PyObject *canon, *canonical_offsets;  /* location._CANON and location.canonical_offsets */
    PyObject *block_run_type;  /* runner.BlockRun */
    PyObject *profile;       /* None, or {iteration: [seconds, ops]} */
    Py_ssize_t node_off[N_NSLOTS];
    unsigned long long misses[N_MISSES];
    PyObject *root_code, *root_dict;  /* the last root found (compared, never dereferenced) */
    uint64_t root_version;  /* calls handed to the Python path, by reason (see MISS) */
    Py_ssize_t block_off[B_NSLOTS];
    Py_ssize_t future_off[U_NSLOTS];
    Py_ssize_t info_prop_off;  /* OpInfo.prop */
    Py_ssize_t info_setter_off;  /* OpInfo.setter */
    Py_ssize_t ex_off[N_NAMES];  /* the executor's slots, by name (EXECUTOR_SLOTS; 0 for other names) */
    int interrupt;  /* an interrupt waits (CoExecutor._on_interrupt): every call goes to Python */
    int in_op;  /* calls of this path under way (CoExecutor._hold_program reads it from another thread) */
} FastPath;

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))
#define NODE(fp, node, name) SLOT(node, (fp)->node_off[name])
#define BLK(fp, blk, name) SLOT(blk, (fp)->block_off[name])
static PyTypeObject *pooled_type;  /* the futures' type, and the offset of their _tn_pooled (set in fp_new) */
static Py_ssize_t pooled_off;
#define FUT(fp, fut, name) SLOT(fut, (fp)->future_off[name])  /* borrowed; NULL where never set */

static int
slot_offsets(PyObject *type, const char **names, Py_ssize_t *offsets, int n)
{
    for (int i = 0; i < n; i++) {
        PyObject *descr = PyObject_GetAttrString(type, names[i]);
        if (descr == NULL)
            return -1;
        if (Py_TYPE(descr) != &PyMemberDescr_Type) {
            Py_DECREF(descr);
            PyErr_Format(PyExc_TypeError, "%s is not a slot", names[i]);
            return -1;
        }
        offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
        Py_DECREF(descr);
    }
    return 0;
}

/* Set a slot, keeping a reference to the value. */
static void
slot_set(PyObject *obj, Py_ssize_t off, PyObject *value)
{
    PyObject *old = SLOT(obj, off);
    Py_INCREF(value);
    SLOT(obj, off) = value;
    Py_XDECREF(old);
}

/* Whether some weak reference names obj (a future the program keeps in a WeakValueDictionary:
   reused, it would name another value; CoExecutor._make_future lets it go). */
static inline int
has_weakrefs(PyObject *obj)
{
    Py_ssize_t off = Py_TYPE(obj)->tp_weaklistoffset;
    return off > 0 && *(PyObject **)((char *)obj + off) != NULL;
}

/* An attribute of a tensor's instance dict (borrowed), or NULL. */
static inline PyObject *
inst_get(PyObject *t, PyObject *name)
{
    PyObject **dictptr = _PyObject_GetDictPtr(t);
    if (dictptr == NULL || *dictptr == NULL)
        return NULL;
    return PyDict_GetItemWithError(*dictptr, name);
}

static inline int
inst_set(PyObject *t, PyObject *name, PyObject *value)
{
    PyObject **dictptr = _PyObject_GetDictPtr(t);
    if (dictptr == NULL || *dictptr == NULL)
        return PyObject_SetAttr(t, name, value);
    return PyDict_SetItem(*dictptr, name, value);
}

/* ---- the executor's attributes (slots of CoExecutor, read by offset: see EXECUTOR_SLOTS) -------- */

/* executor.<name>, a new reference */
static inline PyObject *
ex_get(FastPath *fp, int name)
{
    PyObject *v = SLOT(fp->executor, fp->ex_off[name]);
    if (v == NULL) {
        PyErr_SetObject(PyExc_AttributeError, str[name]);
        return NULL;
    }
    Py_INCREF(v);
    return v;
}

static inline int
ex_set(FastPath *fp, int name, PyObject *value)
{
    slot_set(fp->executor, fp->ex_off[name], value);
    return 0;
}

static inline int
get_ssize(FastPath *fp, int name, Py_ssize_t *out)
{
    PyObject *v = SLOT(fp->executor, fp->ex_off[name]);
    if (v == NULL) {
        PyErr_SetObject(PyExc_AttributeError, str[name]);
        return -1;
    }
    *out = PyLong_AsSsize_t(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static inline int
set_ssize(FastPath *fp, int name, Py_ssize_t value)
{
    PyObject *v = PyLong_FromSsize_t(value);
    if (v == NULL)
        return -1;
    slot_set(fp->executor, fp->ex_off[name], v);
    Py_DECREF(v);
    return 0;
}

static inline int
add_ssize(FastPath *fp, int name, Py_ssize_t delta)
{
    Py_ssize_t v;
    if (get_ssize(fp, name, &v) < 0)
        return -1;
    return set_ssize(fp, name, v + delta);
}

/* node.<slot> as a C integer (ints and bools) */
static inline Py_ssize_t
node_int(PyObject *v)
{
    if (v == Py_True)
        return 1;
    if (v == Py_False || v == NULL)
        return 0;
    return PyLong_AsSsize_t(v);
}

/* ---- _defer ------------------------------------------------------------------------------------ */

/* The wiring index of tensor t in block blk (PendingBlock.input's dict lookup, inline). */
static int
wire_input(FastPath *fp, PyObject *blk, PyObject *t, Py_ssize_t *w)
{
    PyObject *ids = BLK(fp, blk, B_input_ids);
    PyObject *key = PyLong_FromVoidPtr(t);
    if (key == NULL)
        return -1;
    PyObject *k = PyDict_GetItemWithError(ids, key);
    Py_DECREF(key);
    if (k == NULL) {
        if (PyErr_Occurred())
            return -1;
        /* PendingBlock.input, inline, for the common case: not a numpy-shared tensor (snapshot) */
        PyObject *numpy = inst_get(t, str[S_tn_numpy]);
        if (numpy == NULL && PyErr_Occurred())
            return -1;
        if (numpy == Py_True) {
            PyObject *r = PyObject_CallMethodOneArg(blk, str[S_input], t);
            if (r == NULL)
                return -1;
            *w = -1 - PyLong_AsSsize_t(r);
            Py_DECREF(r);
            return 0;
        }
        PyObject *inputs = BLK(fp, blk, B_inputs);
        Py_ssize_t k = PyList_GET_SIZE(inputs);
        PyObject *kv = PyLong_FromSsize_t(k);
        key = PyLong_FromVoidPtr(t);
        int rc = (kv && key) ? PyDict_SetItem(ids, key, kv) : -1;
        Py_XDECREF(kv);
        Py_XDECREF(key);
        if (rc < 0 || PyList_Append(inputs, t) < 0)
            return -1;
        if (Py_TYPE(t) != (PyTypeObject *)fp->future_type) {
            PyObject *local = inst_get(t, str[S_tn_local]);
            if (local == NULL && PyErr_Occurred())
                return -1;
            /* a block may write it now: Python must wait before reading it */
            if (local != NULL && local != Py_False && inst_set(t, str[S_tn_local], Py_False) < 0)
                return -1;
        }
        *w = -1 - k;
        return 0;
    }
    *w = -1 - PyLong_AsSsize_t(k);
    return 0;
}

/* Whether a validated .grad read (a node whose ``immediate`` is GRAD_READ) goes to the Python
   path, CoExecutor._validated_op, rather than being deferred: when its tensor is skeleton-local,
   or when the real .grad may be None (_no_grad_yet: no block queued, a real tensor, .grad None).
   1: the Python path, 0: defer, -1: an error. *real: the real .grad (a new reference) where it was
   read and is deferred (no block queued), else NULL. */
static int
grad_read_now(FastPath *fp, PyObject *const *tensors, Py_ssize_t nt, PyObject **real)
{
    *real = NULL;
    if (nt != 1)
        return 1;
    PyObject *t = tensors[0];
    if (Py_TYPE(t) == (PyTypeObject *)fp->future_type)
        return 0;
    PyObject *local = inst_get(t, str[S_tn_local]);
    if (local == NULL && PyErr_Occurred())
        return -1;
    if (local != NULL && local != Py_False)
        return 1;
    PyObject *runner = ex_get(fp, S_runner);
    if (runner == NULL)
        return -1;
    PyObject *pending = PyObject_GetAttr(runner, str[S_pending]);
    Py_DECREF(runner);
    if (pending == NULL)
        return -1;
    int busy = PyObject_IsTrue(pending);
    Py_DECREF(pending);
    if (busy)
        return busy < 0 ? -1 : 0;
    PyObject *grad = PyObject_GetAttr(t, str[S_grad]);
    if (grad == NULL)
        return -1;
    if (grad == Py_None) {
        Py_DECREF(grad);
        return 1;
    }
    *real = grad;
    return 0;
}

/* The gradient table's entry of real tensor owner, a new reference: [a weak reference to owner,
   the object the program got for its .grad, the pending block where it was recorded]. Where it has
   none, CoExecutor._grad_entry makes it. */
static PyObject *
grad_entry(FastPath *fp, PyObject *owner)
{
    PyObject *table = SLOT(fp->executor, fp->ex_off[S_grad_objs]);
    if (table != NULL && PyDict_CheckExact(table)) {
        PyObject *key = PyLong_FromVoidPtr(owner);
        if (key == NULL)
            return NULL;
        PyObject *entry = PyDict_GetItemWithError(table, key);  /* borrowed */
        Py_DECREF(key);
        if (entry == NULL && PyErr_Occurred())
            return NULL;
        if (entry != NULL && PyList_CheckExact(entry) && PyList_GET_SIZE(entry) == 3
                && PyWeakref_CheckRef(PyList_GET_ITEM(entry, 0))
                && PyWeakref_GET_OBJECT(PyList_GET_ITEM(entry, 0)) == owner) {
            Py_INCREF(entry);
            return entry;
        }
    }
    PyObject *entry = PyObject_CallMethodOneArg(fp->executor, str[S_grad_entry], owner);
    if (entry != NULL && (!PyList_CheckExact(entry) || PyList_GET_SIZE(entry) != 3)) {
        Py_DECREF(entry);
        PyErr_SetString(PyExc_TypeError, "a gradient table's entry is not a list of 3");
        return NULL;
    }
    return entry;
}

/* CoExecutor._grad_object: what a deferred read of real tensor owner's .grad returns, the object
   the program got for that gradient last while it is still that object, else out (its new future,
   which the table keeps). real: the real .grad, or NULL where blocks are queued. Steals out. */
static PyObject *
grad_object(FastPath *fp, PyObject *owner, PyObject *out, PyObject *real)
{
    PyObject *entry = grad_entry(fp, owner);
    if (entry == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    PyObject *obj = PyList_GET_ITEM(entry, 1);
    if (obj == fp->unfollowed) {
        Py_DECREF(entry);
        return out;
    }
    PyObject *blk = SLOT(fp->executor, fp->ex_off[S_block]);
    if (obj != Py_None) {
        int same = real == NULL || PyList_GET_ITEM(entry, 2) == blk || obj == real
            || (Py_TYPE(obj) == (PyTypeObject *)fp->future_type && FUT(fp, obj, U_val) == real);
        if (same) {
            Py_INCREF(obj);
            Py_DECREF(out);
            Py_DECREF(entry);
            return obj;
        }
    }
    Py_INCREF(out);
    PyList_SetItem(entry, 1, out);  /* (steals) */
    Py_INCREF(blk);
    PyList_SetItem(entry, 2, blk);
    Py_DECREF(entry);
    return out;
}

/* CoExecutor._grad_set: a deferred ``p.grad = x`` (x, or None) of real tensor p. */
static int
grad_set(FastPath *fp, PyObject *const *tensors, Py_ssize_t nt)
{
    PyObject *entry = grad_entry(fp, tensors[0]);
    if (entry == NULL)
        return -1;
    if (PyList_GET_ITEM(entry, 1) != fp->unfollowed) {
        PyObject *value = nt > 1 ? tensors[1] : Py_None;
        PyObject *blk = SLOT(fp->executor, fp->ex_off[S_block]);
        Py_INCREF(value);
        PyList_SetItem(entry, 1, value);
        Py_INCREF(blk);
        PyList_SetItem(entry, 2, blk);
    }
    Py_DECREF(entry);
    return 0;
}

/* Whether a validated view in the program's try (a node whose ``immediate`` is CHECK_VIEW) goes to
 * the Python path, coexec._views' first part in C: not where its input is known contiguous (real,
 * or a future whose value is known), nor where it is a future not yet computed and no call raised
 * at its site yet (node.raised: deferred). 1 (Python checks it, or runs it now), 0 (defer), -1 on error. */
static int
view_unknown(FastPath *fp, PyObject *node, PyObject *const *tensors, Py_ssize_t nt)
{
    if (nt < 1)
        return 1;
    PyObject *x = tensors[0];
    if (Py_TYPE(x) == (PyTypeObject *)fp->future_type) {
        x = FUT(fp, x, U_val);
        if (x == NULL || x == Py_None) {
            PyObject *raised = NODE(fp, node, N_raised);
            return raised == NULL ? 1 : PyObject_IsTrue(raised);
        }
    }
    if (Py_TYPE(x) != (PyTypeObject *)fp->tensor_type && Py_TYPE(x) != (PyTypeObject *)fp->parameter_type)
        return 1;
    PyObject *r = PyObject_CallMethodNoArgs(x, str[S_is_contiguous]);
    if (r == NULL)
        return -1;
    int contiguous = r == Py_True;
    Py_DECREF(r);
    return !contiguous;
}

/* A validated op's bookkeeping, as CoExecutor._advance does it in its common case (inline): count
   the op (node.count), count the edge from the cursor, move the cursor (at an iteration's boundary,
   the anchor or a cell's loop row, _advance itself runs); then count it co-executed and flag the
   validated prefix (``_validated`` is read only as a flag: set, not counted). 0, or -1 on an error. */
static int
advance(FastPath *fp, PyObject *node, PyObject *anchor)
{
    PyObject *ex = fp->executor;
    PyObject *cursor = NULL;
    /* node.count += 1 */
    {
        PyObject *c = PyLong_FromSsize_t(node_int(NODE(fp, node, N_count)) + 1);
        if (c == NULL)
            goto error;
        slot_set(node, fp->node_off[N_count], c);
        Py_DECREF(c);
    }
    /* _advance's common case, inline: count the edge, move the cursor */
    cursor = ex_get(fp, S_cursor);
    if (cursor == NULL)
        goto error;
    {
        PyObject *succ = NODE(fp, cursor, N_succ);
        PyObject *n = PyDict_GetItemWithError(succ, node);
        if (n != NULL) {
            PyObject *pred = NODE(fp, node, N_pred);
            PyObject *m = PyDict_GetItemWithError(pred, cursor);
            if (m == NULL) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_KeyError, "an edge without its reverse");
                goto error;
            }
            PyObject *n1 = PyLong_FromSsize_t(PyLong_AsSsize_t(n) + 1);
            PyObject *m1 = PyLong_FromSsize_t(PyLong_AsSsize_t(m) + 1);
            int rc = (n1 && m1) ? (PyDict_SetItem(succ, node, n1) | PyDict_SetItem(pred, cursor, m1)) : -1;
            Py_XDECREF(n1);
            Py_XDECREF(m1);
            if (rc < 0)
                goto error;
        } else {
            if (PyErr_Occurred())
                goto error;
            PyObject *graph = ex_get(fp, S_graph);
            PyObject *r = graph ? PyObject_CallMethodObjArgs(graph, str[S_step], cursor, node, NULL) : NULL;
            Py_XDECREF(graph);
            if (r == NULL)
                goto error;
            Py_DECREF(r);
        }
    }
    {
        Py_ssize_t now_op, limit, first;
        if (get_ssize(fp, S_op_counter, &now_op) < 0 || get_ssize(fp, S_anchor_limit, &limit) < 0
                || get_ssize(fp, S_anchor_first, &first) < 0)
            goto error;
        now_op += 1;
        PyObject *explicit_ = ex_get(fp, S_explicit_iterations);
        PyObject *token = ex_get(fp, S_cell_token);
        if (explicit_ == NULL || token == NULL) {
            Py_XDECREF(explicit_);
            Py_XDECREF(token);
            goto error;
        }
        int boundary = node == anchor || PyObject_IsTrue(explicit_) || NODE(fp, node, N_cell_mark) != token
            || now_op > limit || node_int(NODE(fp, node, N_seen_at)) < first
            || (Py_TYPE(anchor) == (PyTypeObject *)fp->node_type  /* a variant of the anchor's op */
                && node_int(NODE(fp, node, N_family)) == node_int(NODE(fp, anchor, N_family)));
        Py_DECREF(explicit_);
        Py_DECREF(token);
        if (boundary) {
            PyObject *r = PyObject_CallMethodObjArgs(ex, str[S_advance], node, Py_True, NULL);
            if (r == NULL)
                goto error;
            Py_DECREF(r);
        } else {
            PyObject *s = PyLong_FromSsize_t(now_op);  /* op_counter and node.seen_at: one int */
            if (s == NULL || ex_set(fp, S_cursor, node) < 0) {
                Py_XDECREF(s);
                goto error;
            }
            slot_set(fp->executor, fp->ex_off[S_op_counter], s);
            slot_set(node, fp->node_off[N_seen_at], s);
            Py_DECREF(s);
        }
    }
    Py_ssize_t validated;
    if (add_ssize(fp, S_ops_coexec, 1) < 0 || get_ssize(fp, S_validated, &validated) < 0
            || (!validated && set_ssize(fp, S_validated, 1) < 0))
        goto error;
    Py_DECREF(cursor);
    return 0;
error:
    Py_XDECREF(cursor);
    return -1;
}

/* A tensor's provenance (borrowed): a future's _tn_src, a real tensor's from its instance dict, or
   EXTERNAL where it has none (coexec: ``t._tn_src`` / ``getattr(t, "_tn_src", EXTERNAL)``). NULL on
   an error. */
static PyObject *
tensor_src(FastPath *fp, PyObject *t)
{
    if (Py_TYPE(t) == (PyTypeObject *)fp->future_type) {
        PyObject *src = FUT(fp, t, U_src);
        if (src == NULL && !PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "a future without its source");
        return src;
    }
    PyObject *src = inst_get(t, str[S_tn_src]);
    if (src == NULL && !PyErr_Occurred())
        src = fp->external;
    return src;
}

/* node.src_seen, made fresh when it is not a list of nt: per slot, the source last added to
   node.sources[slot] (sources only grow: the same source again needs no set lookup). Borrowed (the
   node holds it), or NULL on an error. */
static PyObject *
sources_seen(FastPath *fp, PyObject *node, Py_ssize_t nt)
{
    PyObject *seen = NODE(fp, node, N_src_seen);
    if (seen != NULL && PyList_CheckExact(seen) && PyList_GET_SIZE(seen) == nt)
        return seen;
    PyObject *fresh = PyList_New(nt);
    if (fresh == NULL)
        return NULL;
    for (Py_ssize_t slot = 0; slot < nt; slot++) {
        Py_INCREF(Py_None);
        PyList_SET_ITEM(fresh, slot, Py_None);
    }
    slot_set(node, fp->node_off[N_src_seen], fresh);
    Py_DECREF(fresh);
    return fresh;
}

/* node.sources[slot].add(src), unless src is the one last added there. 0, or -1 on an error. */
static int
note_source(FastPath *fp, PyObject *node, PyObject *seen, Py_ssize_t slot, PyObject *src)
{
    if (PyList_GET_ITEM(seen, slot) == src)
        return 0;
    PyObject *set = PyList_GET_ITEM(NODE(fp, node, N_sources), slot);
    Py_INCREF(src);  /* src may be borrowed from a dict that the calls below change */
    int has = PySet_Contains(set, src);
    if (has == 0)
        has = PySet_Add(set, src);
    if (has < 0) {
        Py_DECREF(src);
        return -1;
    }
    PyList_SetItem(seen, slot, src);  /* steals the reference taken above */
    return 0;
}

/* Whether every tensor is skeleton-local (coexec._all_local): a real tensor marked _tn_local.
   -1 on an error. */
static int
all_local(PyObject *const *tensors, Py_ssize_t nt, PyObject *future_type)
{
    if (nt == 0)
        return 0;
    for (Py_ssize_t i = 0; i < nt; i++) {
        if (Py_TYPE(tensors[i]) == (PyTypeObject *)future_type)
            return 0;
        PyObject *local = inst_get(tensors[i], str[S_tn_local]);
        if (local == NULL)
            return PyErr_Occurred() ? -1 : 0;
        int truth = PyObject_IsTrue(local);
        if (truth <= 0)
            return truth;
    }
    return 1;
}

/* A validated immediate op or fetch whose tensors are all skeleton-local (an optimizer's step
   counter: ``step += 1``, ``step.item()``), run now, as CoExecutor._validated_op and _run_now run
   it: nothing is pending that could write those tensors, so nothing is waited for. The outputs
   taken here are an input returned in place, None and a Python value; any other goes on to the
   Python path's CoExecutor._ran_now. */
static PyObject *
run_local(FastPath *fp, PyObject *node, PyObject *func, PyObject *args, PyObject *kwargs,
          PyObject *const *tensors, Py_ssize_t nt, PyObject *scalars, PyObject *frame)
{
    PyObject *seen = sources_seen(fp, node, nt);
    if (seen == NULL)
        return NULL;
    for (Py_ssize_t slot = 0; slot < nt; slot++) {
        PyObject *src = tensor_src(fp, tensors[slot]);
        if (src == NULL || note_source(fp, node, seen, slot, src) < 0)
            return NULL;
    }
    PyObject *out = PyObject_Call(func, args, kwargs != NULL && kwargs != Py_None && PyDict_GET_SIZE(kwargs) ? kwargs : NULL);
    if (out == NULL)
        return NULL;
    PyObject *struc = NODE(fp, node, N_out_struct);
    int simple;
    if (PyObject_TypeCheck(out, (PyTypeObject *)fp->tensor_type)) {
        simple = 0;
        for (Py_ssize_t i = 0; struc == fp->tensor_struct && i < nt && !simple; i++)
            simple = tensors[i] == out;  /* in place: the input keeps its mark and provenance */
    } else if (out == Py_None) {
        simple = struc == fp->none_struct;
    } else {
        simple = struc == Py_None && !PyTuple_Check(out) && !PyList_Check(out);
    }
    if (!simple) {
        PyObject *tlist = PyList_New(nt);
        if (tlist == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < nt; i++) {
            Py_INCREF(tensors[i]);
            PyList_SET_ITEM(tlist, i, tensors[i]);
        }
        PyObject *argv[7] = {fp->executor, node, NODE(fp, node, N_info), tlist, frame, scalars, out};
        PyObject *r = PyObject_VectorcallMethod(str[S_ran_now], argv, 7, NULL);
        Py_DECREF(tlist);
        Py_DECREF(out);
        return r;
    }
    PyObject *anchor = ex_get(fp, S_anchor);
    if (anchor == NULL) {
        Py_DECREF(out);
        return NULL;
    }
    int rc = advance(fp, node, anchor);
    Py_DECREF(anchor);
    if (rc < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static PyObject *
defer(FastPath *fp, PyObject *node, PyObject *const *tensors, Py_ssize_t nt, PyObject *scalars)
{
    PyObject *ex = fp->executor;
    PyObject *blk = NULL, *anchor = NULL, *out = NULL, *wiring = NULL, *op = NULL;
    PyObject *values = NULL;

    blk = ex_get(fp, S_block);
    if (blk == NULL)
        goto error;
    if (Py_TYPE(blk) != (PyTypeObject *)fp->block_type) {
        PyErr_SetString(PyExc_TypeError, "the executor's block is not a PendingBlock");
        goto error;
    }
    anchor = ex_get(fp, S_anchor);
    if (anchor == NULL)
        goto error;
    Py_ssize_t grad_op = node_int(NODE(fp, node, N_grad_op));
    Py_ssize_t kind = node_int(BLK(fp, blk, B_kind));
    int barrier = NODE(fp, node, N_barrier) == Py_True;
    if (PyList_GET_SIZE(BLK(fp, blk, B_ops))
            && (node == anchor || barrier || (grad_op && kind == 1) || (!grad_op && kind == 2))) {
        PyObject *r = PyObject_CallMethodNoArgs(ex, str[S_flush]);
        if (r == NULL)
            goto error;
        Py_DECREF(r);
        Py_DECREF(blk);
        blk = ex_get(fp, S_block);
        if (blk == NULL)
            goto error;
        kind = 0;
    }
    if (kind == 0 || grad_op == 2) {
        PyObject *k = PyLong_FromSsize_t(kind == 0 ? (grad_op == 0 ? 1 : grad_op == 1 ? 2 : 3) : 3);
        slot_set(blk, fp->block_off[B_kind], k);
        Py_DECREF(k);
    }
    /* wiring and provenance; node.src_seen: per slot, the source last added to node.sources[slot]
       (sources only grow: the same source again needs no set lookup) */
    PyObject *seen = sources_seen(fp, node, nt);
    if (seen == NULL)
        goto error;
    Py_ssize_t wired[MAX_TENSORS];
    if (nt > MAX_TENSORS) {
        PyErr_SetString(PyExc_ValueError, "more tensors than the fast path takes");
        goto error;
    }
    for (Py_ssize_t slot = 0; slot < nt; slot++) {
        PyObject *t = tensors[slot];
        PyObject *src = tensor_src(fp, t);
        Py_ssize_t w;
        if (src == NULL)
            goto error;
        if (Py_TYPE(t) == (PyTypeObject *)fp->future_type) {
            PyObject *tblk = FUT(fp, t, U_blk);
            if (tblk == NULL) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_AttributeError, "a future without its block");
                goto error;
            }
            if (tblk == blk) {
                PyObject *v = FUT(fp, t, U_vidx);
                if (v == NULL) {
                    if (!PyErr_Occurred())
                        PyErr_SetString(PyExc_AttributeError, "a future without its index");
                    goto error;
                }
                w = PyLong_AsSsize_t(v);
            } else if (wire_input(fp, blk, t, &w) < 0) {
                goto error;
            }
        } else if (wire_input(fp, blk, t, &w) < 0) {
            goto error;
        }
        wired[slot] = w;
        if (note_source(fp, node, seen, slot, src) < 0)
            goto error;
    }
    /* the op: node.last_op while its wiring is the same (CoExecutor._defer), so that block keys
       compare by identity in take_run */
    op = NODE(fp, node, N_last_op);
    int same = op != NULL && PyTuple_CheckExact(op) && PyTuple_GET_SIZE(op) == 2
        && PyTuple_CheckExact(PyTuple_GET_ITEM(op, 1)) && PyTuple_GET_SIZE(PyTuple_GET_ITEM(op, 1)) == nt;
    for (Py_ssize_t slot = 0; same && slot < nt; slot++) {
        PyObject *v = PyTuple_GET_ITEM(PyTuple_GET_ITEM(op, 1), slot);
        same = PyLong_CheckExact(v) && PyLong_AsSsize_t(v) == wired[slot];
    }
    if (same) {
        Py_INCREF(op);
    } else {
        wiring = PyTuple_New(nt);
        if (wiring == NULL)
            goto error;
        for (Py_ssize_t slot = 0; slot < nt; slot++) {
            PyObject *wv = PyLong_FromSsize_t(wired[slot]);
            if (wv == NULL)
                goto error;
            PyTuple_SET_ITEM(wiring, slot, wv);
        }
        op = PyTuple_Pack(2, node, wiring);
        if (op == NULL)
            goto error;
        slot_set(node, fp->node_off[N_last_op], op);
    }
    if (PyList_Append(BLK(fp, blk, B_ops), op) < 0)
        goto error;
    PyObject *passed = NODE(fp, node, N_passed);
    Py_ssize_t np = PyTuple_GET_SIZE(passed);
    for (Py_ssize_t i = 0; i < np; i++) {
        Py_ssize_t k = PyLong_AsSsize_t(PyTuple_GET_ITEM(passed, i));
        if (k < 0 || k >= PyList_GET_SIZE(scalars)) {
            PyErr_SetString(PyExc_IndexError, "a node's passed scalar is missing");
            goto error;
        }
        if (PyList_Append(BLK(fp, blk, B_floats), PyList_GET_ITEM(scalars, k)) < 0)
            goto error;
    }
    /* the output */
    Py_ssize_t alias = node_int(NODE(fp, node, N_alias));
    PyObject *struc = NODE(fp, node, N_out_struct);
    if (alias >= 0) {
        out = tensors[alias];
        Py_INCREF(out);
    } else if (struc == fp->none_struct) {
        out = Py_None;
        Py_INCREF(out);
    } else {
        PyObject *getter_src = NULL;
        PyObject *info = NODE(fp, node, N_info);
        if (info == NULL || Py_TYPE(info) != (PyTypeObject *)fp->info_type) {
            PyErr_SetString(PyExc_TypeError, "a node's info is not an OpInfo");
            goto error;
        }
        PyObject *info_prop = SLOT(info, fp->info_prop_off);  /* node.info.prop */
        if (info_prop == NULL) {
            PyErr_SetObject(PyExc_AttributeError, str[S_prop]);
            goto error;
        }
        Py_INCREF(info_prop);
        PyObject *setter = SLOT(info, fp->info_setter_off);  /* node.info.setter */
        if (info_prop != Py_None && setter == Py_False && nt > 0) {
            /* a property read: its output named by what it is read from, as coexec._out_src
               names it, ("prop", name, the owner's provenance) */
            PyObject *owner = tensor_src(fp, tensors[0]);
            getter_src = owner ? PyTuple_Pack(3, str[S_prop], info_prop, owner) : NULL;
            if (getter_src == NULL) {
                Py_DECREF(info_prop);
                goto error;
            }
        }
        Py_DECREF(info_prop);
        PyObject *futs = BLK(fp, blk, B_futs);
        PyObject *out_meta = NODE(fp, node, N_out_meta);
        Py_ssize_t nout = PyList_GET_SIZE(out_meta);
        PyObject *pool = NODE(fp, node, N_pool);
        if (PyList_GET_SIZE(pool) != nout) {
            /* coexec._new_pool: one ring per output, [position, future, ...] */
            PyObject *fresh = PyList_New(nout);
            for (Py_ssize_t i = 0; fresh != NULL && i < nout; i++) {
                PyObject *ring = Py_BuildValue("[i]", 0);
                if (ring == NULL)
                    Py_CLEAR(fresh);
                else
                    PyList_SET_ITEM(fresh, i, ring);
            }
            if (fresh == NULL) {
                Py_XDECREF(getter_src);
                goto error;
            }
            slot_set(node, fp->node_off[N_pool], fresh);
            Py_DECREF(fresh);
            pool = NODE(fp, node, N_pool);
        }
        values = PyList_New(nout);
        if (values == NULL) {
            Py_XDECREF(getter_src);
            goto error;
        }
        for (Py_ssize_t j = 0; j < nout; j++) {
            /* Recycle the future the ring's position names when nothing but the ring holds it
               (see CoExecutor._defer and _make_future). */
            PyObject *ring = PyList_GET_ITEM(pool, j);
            PyObject *fut = NULL;
            Py_ssize_t n = PyList_CheckExact(ring) ? PyList_GET_SIZE(ring) - 1 : -1;
            if (n < 0) {
                PyErr_SetString(PyExc_TypeError, "a node's future ring is not a list");
                Py_XDECREF(getter_src);
                goto error;
            }
            if (n > 0) {
                Py_ssize_t pos = PyLong_AsSsize_t(PyList_GET_ITEM(ring, 0));
                if (pos >= 0 && pos < n && Py_REFCNT(PyList_GET_ITEM(ring, 1 + pos)) == 1
                        && !has_weakrefs(PyList_GET_ITEM(ring, 1 + pos))) {
                    fut = PyList_GET_ITEM(ring, 1 + pos);
                    PyObject *next = PyLong_FromSsize_t((pos + 1) % n);
                    if (next == NULL) {
                        Py_XDECREF(getter_src);
                        goto error;
                    }
                    PyList_SetItem(ring, 0, next);  /* steals next */
                }
            }
            if (fut != NULL) {
                Py_INCREF(fut);
                slot_set(fut, fp->future_off[U_val], Py_None);
                if (getter_src != NULL)
                    slot_set(fut, fp->future_off[U_src], getter_src);
            } else {
                PyObject *jj = PyLong_FromSsize_t(j);
                fut = jj ? PyObject_CallFunctionObjArgs(fp->make_future, node, jj,
                                                        getter_src ? getter_src : Py_None, NULL) : NULL;
                Py_XDECREF(jj);
                if (fut == NULL) {
                    Py_XDECREF(getter_src);
                    goto error;
                }
                pool = NODE(fp, node, N_pool);  /* (make_future changed the ring) */
            }
            PyObject *vidx = PyLong_FromSsize_t(PyList_GET_SIZE(futs));
            if (vidx != NULL) {
                slot_set(fut, fp->future_off[U_blk], blk);
                slot_set(fut, fp->future_off[U_vidx], vidx);
            }
            if (vidx == NULL || PyList_Append(futs, fut) < 0) {
                Py_XDECREF(vidx);
                Py_DECREF(fut);
                Py_XDECREF(getter_src);
                goto error;
            }
            Py_DECREF(vidx);
            PyList_SET_ITEM(values, j, fut);  /* steals */
        }
        Py_XDECREF(getter_src);
        if (struc == fp->tensor_struct) {
            out = PyList_GET_ITEM(values, 0);
            Py_INCREF(out);
        } else {
            out = PyObject_CallFunctionObjArgs(fp->build_out, struc, values, NULL);
            if (out == NULL)
                goto error;
        }
        Py_CLEAR(values);
    }
    if (advance(fp, node, anchor) < 0)
        goto error;
    {
        Py_ssize_t max_block;
        if (add_ssize(fp, S_deferred_total, 1) < 0 || get_ssize(fp, S_max_block, &max_block) < 0)
            goto error;
        if (PyList_GET_SIZE(BLK(fp, blk, B_ops)) >= max_block || barrier) {
            PyObject *r = PyObject_CallMethodNoArgs(ex, str[S_flush]);
            if (r == NULL)
                goto error;
            Py_DECREF(r);
        }
    }
    Py_DECREF(blk);
    Py_DECREF(anchor);
    Py_XDECREF(wiring);
    Py_DECREF(op);
    return out;
error:
    Py_XDECREF(blk);
    Py_XDECREF(anchor);
    Py_XDECREF(wiring);
    Py_XDECREF(op);
    Py_XDECREF(values);
    Py_XDECREF(out);
    return NULL;
}

/* ---- the fast path ----------------------------------------------------------------------------- */

/* Whether tensor t has the metadata m = (shape, dtype, device, requires_grad). -1 on error. */
static int
meta_matches(FastPath *fp, PyObject *t, PyObject *m)
{
    if (Py_TYPE(t) == (PyTypeObject *)fp->future_type) {
        PyObject *tm = FUT(fp, t, U_meta);
        if (tm == NULL)
            return PyErr_Occurred() ? -1 : 0;
        int eq = tm == m ? 1 : PyObject_RichCompareBool(tm, m, Py_EQ);
        PyObject *val = FUT(fp, t, U_val);
        if (eq == 1 && val != NULL && val != Py_None) {
            /* a value numpy shares (the program called .numpy() on it): the Python path */
            PyObject *mark = inst_get(val, str[S_tn_numpy]);
            if (mark == NULL && PyErr_Occurred())
                return -1;
            if (mark == Py_True)
                return 0;
        }
        return eq;
    }
    if (!PyTuple_Check(m) || PyTuple_GET_SIZE(m) != 4)
        return 0;
    if (Py_TYPE(t) != (PyTypeObject *)fp->tensor_type && Py_TYPE(t) != (PyTypeObject *)fp->parameter_type)
        return 0;  /* a tensor subclass of the program's: its metadata names its type (ops.meta_of) */
    PyObject *names[4] = {str[S_shape], str[S_dtype], str[S_device], str[S_requires_grad]};
    /* cheapest first: dtype and requires_grad are singletons */
    static const int order[4] = {1, 3, 0, 2};
    for (int i = 0; i < 4; i++) {
        int k = order[i];
        PyObject *v = PyObject_GetAttr(t, names[k]);
        if (v == NULL) {
            if (k == 0 && PyErr_ExceptionMatches(PyExc_RuntimeError)) {
                PyErr_Clear();  /* a nested tensor has no shape (ops.plain_meta): not this node */
                return 0;
            }
            return -1;
        }
        PyObject *want = PyTuple_GET_ITEM(m, k);
        int eq = v == want ? 1 : PyObject_RichCompareBool(v, want, Py_EQ);
        Py_DECREF(v);
        if (eq <= 0)
            return eq;
    }
    /* memory Python shares (a numpy array's): the Python path takes its ops (see
     * CoExecutor._shares_python_memory, whose answer the tensor keeps: True, or the epoch it was
     * found not to be shared in) */
    PyObject *mark = inst_get(t, str[S_tn_numpy]);
    if (mark == NULL && PyErr_Occurred())
        return -1;
    if (mark == Py_True)
        return 0;
    if (mark != NULL && mark == SLOT(fp->executor, fp->ex_off[S_memory_epoch]))
        return 1;
    PyObject *r = PyObject_CallOneArg(fp->shares_memory, t);
    if (r == NULL)
        return -1;
    int shared = r == Py_True;
    Py_DECREF(r);
    return !shared;
}

static PyObject *
call_slow(FastPath *fp, PyObject *func, PyObject *types, PyObject *args, PyObject *kwargs)
{
    PyObject *argv[4] = {func, types, args, kwargs ? kwargs : Py_None};
    return PyObject_Vectorcall(fp->slow, argv, 4, NULL);
}

/* ops._scan, in C: append v's tensors and Python scalars; return its part of the spec (a new
 * reference). NULL on error, or with *over set when the call has more than MAX_TENSORS tensors. */
static PyObject *scan_seq(FastPath *fp, PyObject *seq, PyObject **tensors, Py_ssize_t *nt, PyObject *scalars, int *over);

static PyObject *
scan_value(FastPath *fp, PyObject *v, PyObject **tensors, Py_ssize_t *nt, PyObject *scalars, int *over)
{
    if (PyObject_TypeCheck(v, (PyTypeObject *)fp->tensor_type)) {
        if (*nt >= MAX_TENSORS) {
            *over = 1;
            return NULL;
        }
        tensors[(*nt)++] = v;
        Py_INCREF(fp->marker_t);
        return fp->marker_t;
    }
    if (PyLong_CheckExact(v)) {
        if (PyList_Append(scalars, v) < 0)
            return NULL;
        Py_INCREF(v);
        return v;
    }
    if (PyList_CheckExact(v) || PyTuple_CheckExact(v) || Py_TYPE(v) == (PyTypeObject *)fp->size_type) {
        PyObject *inner = scan_seq(fp, v, tensors, nt, scalars, over);
        if (inner == NULL)
            return NULL;
        PyObject *r = PyTuple_Pack(2, PyList_CheckExact(v) ? Py_True : Py_False, inner);
        Py_DECREF(inner);
        return r;
    }
    if (PySlice_Check(v)) {
        PySliceObject *sl = (PySliceObject *)v;
        PyObject *a = scan_value(fp, sl->start, tensors, nt, scalars, over);
        PyObject *b = a ? scan_value(fp, sl->stop, tensors, nt, scalars, over) : NULL;
        PyObject *c = b ? scan_value(fp, sl->step, tensors, nt, scalars, over) : NULL;
        PyObject *r = c ? PyTuple_Pack(4, str[S_slice], a, b, c) : NULL;
        Py_XDECREF(a);
        Py_XDECREF(b);
        Py_XDECREF(c);
        return r;
    }
    if (PyFloat_Check(v)) {  /* floats and their subclasses (numpy's float64); bool is not one */
        if (PyList_Append(scalars, v) < 0)
            return NULL;
        Py_INCREF(fp->marker_f);
        return fp->marker_f;
    }
    if (v != Py_None && !PyBool_Check(v) && PyDict_GET_SIZE(fp->numpy_scalars)) {
        /* a numpy scalar: a float feed or an int, as Python's (ops._scan) */
        PyObject *kind = PyDict_GetItemWithError(fp->numpy_scalars, (PyObject *)Py_TYPE(v));
        if (kind == (PyObject *)&PyFloat_Type) {
            PyObject *f = PyNumber_Float(v);
            int failed = f == NULL || PyList_Append(scalars, f) < 0;
            Py_XDECREF(f);
            if (failed)
                return NULL;
            Py_INCREF(fp->marker_f);
            return fp->marker_f;
        }
        if (kind == (PyObject *)&PyLong_Type) {
            PyObject *i = PyNumber_Index(v);
            if (i == NULL || PyList_Append(scalars, i) < 0) {
                Py_XDECREF(i);
                return NULL;
            }
            return i;
        }
        if (kind == NULL && PyErr_Occurred())
            return NULL;
    }
    if (PyFunction_Check(v))  /* a function, by its code (ops._scan) */
        return PyTuple_Pack(2, fp->marker_fn, PyFunction_GET_CODE(v));
    if (PyDict_CheckExact(v) || PySet_CheckExact(v) || Py_TYPE(v) == (PyTypeObject *)fp->generator_type
            || Py_TYPE(v)->tp_hash == PyObject_HashNotImplemented)
        /* a mutable container, a torch.Generator or an unhashable object (a numpy index array), by
           its type (ops._scan; an object compared by identity it keys by type too, this path by
           itself: never equal to the node's key, so Python takes that call) */
        return PyTuple_Pack(2, fp->marker_mut, (PyObject *)Py_TYPE(v));
    Py_INCREF(v);
    return v;
}

static PyObject *
scan_seq(FastPath *fp, PyObject *seq, PyObject **tensors, Py_ssize_t *nt, PyObject *scalars, int *over)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *out = PyTuple_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = scan_value(fp, items[i], tensors, nt, scalars, over);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, item);
    }
    return out;
}

/* ops.generalize: spec with the ints at the scan-order positions in mask replaced by ops.G */
static PyObject *
generalize(FastPath *fp, PyObject *item, PyObject *mask, Py_ssize_t *counter)
{
    if (PyLong_CheckExact(item)) {
        PyObject *pos = PyLong_FromSsize_t((*counter)++);
        if (pos == NULL)
            return NULL;
        int in = PySet_Contains(mask, pos);
        Py_DECREF(pos);
        if (in < 0)
            return NULL;
        PyObject *r = in ? fp->marker_g : item;
        Py_INCREF(r);
        return r;
    }
    if (PyTuple_CheckExact(item)) {
        Py_ssize_t n = PyTuple_GET_SIZE(item);
        PyObject *out = PyTuple_New(n);
        for (Py_ssize_t i = 0; out != NULL && i < n; i++) {
            PyObject *x = generalize(fp, PyTuple_GET_ITEM(item, i), mask, counter);
            if (x == NULL)
                Py_CLEAR(out);
            else
                PyTuple_SET_ITEM(out, i, x);
        }
        return out;
    }
    Py_INCREF(item);
    return item;
}

/* Whether code is a root (a cell, a script, a @coexecute function): 1, 0, or -1 on error. */
static int
is_root(FastPath *fp, PyObject *code)
{
    PyObject *roots = ex_get(fp, S_root_codes);
    if (roots == NULL)
        return -1;
    int in;
#ifdef ROOTS_VERSION
    /* A code object hashes slowly: remember the last root found, while the dict is unchanged
       (it holds the code meanwhile, so the pointer names the same object). */
    if (code == fp->root_code && roots == fp->root_dict && ROOTS_VERSION(roots) == fp->root_version) {
        in = 1;
    } else {
        in = PySequence_Contains(roots, code);
        if (in == 1 && PyDict_CheckExact(roots)) {
            fp->root_code = code;
            fp->root_dict = roots;
            fp->root_version = ROOTS_VERSION(roots);
        }
    }
#else
    in = PySequence_Contains(roots, code);
#endif
    Py_DECREF(roots);
    return in;
}

/* location.frame_offset: frame's instruction offset, made stable. -1 with an error set on error. */
static Py_ssize_t
frame_offset(FastPath *fp, PyFrameObject *frame, PyObject *code)
{
    Py_ssize_t lasti = PyFrame_GetLasti(frame);
    PyObject *id = PyLong_FromVoidPtr(code);
    if (id == NULL)
        return -1;
    PyObject *entry = PyDict_GetItemWithError(fp->canon, id);
    Py_DECREF(id);
    PyObject *canon;
    if (entry != NULL && PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 2 && PyTuple_GET_ITEM(entry, 0) == code) {
        canon = PyTuple_GET_ITEM(entry, 1);
        Py_INCREF(canon);
    } else {
        if (PyErr_Occurred())
            return -1;
        canon = PyObject_CallOneArg(fp->canonical_offsets, code);
        if (canon == NULL)
            return -1;
    }
    Py_ssize_t index = lasti / 2, offset = lasti;
    if (PyList_CheckExact(canon) && index >= 0 && index < PyList_GET_SIZE(canon))
        offset = PyLong_AsSsize_t(PyList_GET_ITEM(canon, index));
    Py_DECREF(canon);
    return offset;
}

/* CoExecutor._tail_ok: whether the frames above the op's caller stand where tail says.
 * 1, 0, or -1 on error. */
static int
tail_ok(FastPath *fp, PyObject *parent, PyObject *tail)
{
    Py_ssize_t n = PyTuple_GET_SIZE(tail);
    PyFrameObject *f = (PyFrameObject *)parent;
    Py_XINCREF(f);
    int ok = 1;
    for (Py_ssize_t i = 0; ok && i < n - 1; i++) {
        PyObject *want = PyTuple_GET_ITEM(tail, i);
        if (f == NULL || !PyTuple_CheckExact(want) || PyTuple_GET_SIZE(want) != 2) {
            ok = 0;
            break;
        }
        PyObject *code = (PyObject *)PyFrame_GetCode(f);
        if (code != PyTuple_GET_ITEM(want, 0)) {
            ok = 0;
        } else {
            Py_ssize_t offset = frame_offset(fp, f, code);
            if (offset == -1 && PyErr_Occurred())
                ok = -1;
            else
                ok = offset == PyLong_AsSsize_t(PyTuple_GET_ITEM(want, 1));
        }
        Py_DECREF(code);
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    if (ok == 1) {
        if (f == NULL) {
            ok = 0;
        } else {
            PyObject *code = (PyObject *)PyFrame_GetCode(f);
            ok = is_root(fp, code);
            Py_DECREF(code);
        }
    }
    Py_XDECREF(f);
    if (ok == 1) {
        /* While parent runs, the frames above it cannot move: remember it for the next ops. */
        if (ex_set(fp, S_ok_parent, parent) < 0 || set_ssize(fp, S_ok_lasti, PyFrame_GetLasti((PyFrameObject *)parent)) < 0
                || ex_set(fp, S_ok_tail, tail) < 0)
            return -1;
    }
    return ok;
}

/* The calls _on_op runs at once without a node: funcs it classified "meta" (run with subclass
 * dispatch off, so a future answers from its metadata) and, when no tensor is among the
 * arguments, the "passthrough" funcs. 1 with *result set (NULL if the call raised), 0 if not one. */
static int
direct_call(FastPath *fp, PyObject *func, PyObject *args, PyObject *kwargs, PyObject **tensors, PyObject **result)
{
    PyObject *meta = ex_get(fp, S_meta_funcs);
    if (meta == NULL)
        return -1;
    int is_meta = PySet_Contains(meta, func);
    Py_DECREF(meta);
    if (is_meta < 0) {  /* an unhashable callable: not one of them */
        PyErr_Clear();
        return 0;
    }
    if (is_meta) {
        PyObject *argv[3] = {func, args, kwargs ? kwargs : Py_None};
        *result = PyObject_Vectorcall(fp->run_meta, argv, 3, NULL);
        return 1;
    }
    PyObject *passthrough = ex_get(fp, S_passthrough);
    if (passthrough == NULL)
        return -1;
    int through = PySet_Contains(passthrough, func);
    Py_DECREF(passthrough);
    if (through <= 0) {
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t nt = 0;
    int over = 0;
    PyObject *scalars = PyList_New(0);
    PyObject *spec = scalars ? scan_seq(fp, args, tensors, &nt, scalars, &over) : NULL;
    if (spec != NULL && kwargs != NULL && kwargs != Py_None) {
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        while (PyDict_Next(kwargs, &pos, &k, &v)) {
            PyObject *item = scan_value(fp, v, tensors, &nt, scalars, &over);
            if (item == NULL) {
                Py_CLEAR(spec);
                break;
            }
            Py_DECREF(item);
        }
    }
    Py_XDECREF(scalars);
    if (spec == NULL) {
        if (!over)
            return -1;
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(spec);
    if (nt)
        return 0;
    *result = PyObject_Call(func, args, kwargs != Py_None ? kwargs : NULL);
    return 1;
}

/* The fast path proper (CoExecutor.on_op's first branch). With *taken == 0 the call was not
 * taken and nothing was changed: the Python path takes it. */
static PyObject *
fast(FastPath *fp, PyObject *func, PyObject *args, PyObject *kwargs, int *taken)
{
    PyObject *ex = fp->executor;
    PyObject *result = NULL;
    PyObject *state = NULL, *mode = NULL, *cursor = NULL, *key = NULL, *spec = NULL, *scalars = NULL;
    PyObject *parent = NULL, *code = NULL, *lasti_obj = NULL, *entries = NULL, *tlist = NULL;
    PyObject *real = NULL;  /* a .grad read's real .grad (grad_read_now) */
    PyObject *stack_tensors[MAX_TENSORS];
    PyObject **tensors = stack_tensors;
    Py_ssize_t nt = 0;
    int parent_done = 0;
    *taken = 0;

    if (kwargs != NULL && kwargs != Py_None && !PyDict_Check(kwargs)) {
        fp->misses[13]++;  /* keyword arguments not in a dict */
        return NULL;
    }
    if (!PyTuple_CheckExact(args) || fp->interrupt)
        return NULL;
    mode = ex_get(fp, S_mode);
    if (mode == NULL)
        goto error;
    if (mode == fp->eager_) {
        /* Eager iterations (a baseline, or auto's choice where eager is faster): the call runs as it
           is, as _on_op's eager branch runs it; a call of the anchor's function goes to Python,
           which checks its site for the end of an iteration. */
        PyObject *anchor = ex_get(fp, S_anchor);
        if (anchor == NULL)
            goto error;
        int watched = 0;
        if (anchor != Py_None) {
            PyObject *afunc = PyObject_GetAttr(anchor, str[S_func]);
            watched = afunc == NULL ? -1 : afunc == func ? 1
                : Py_TYPE(afunc) == Py_TYPE(func) ? PyObject_RichCompareBool(afunc, func, Py_EQ) : 0;
            Py_XDECREF(afunc);
        }
        Py_DECREF(anchor);
        if (watched < 0)
            goto error;
        if (watched)
            MISS(11);
        if (PyFunction_Check(func))
            /* torch's Python-level function (F.softmax), called again by the mode: from C, its
               warnings (stacklevel 2 or 3) would name torch's handle_torch_function; the Python
               path calls it from a frame standing in for the program's (location.stand_in). */
            MISS(16);
        *taken = 1;
        result = PyObject_Call(func, args, kwargs != NULL && kwargs != Py_None ? kwargs : NULL);
        goto out;
    }
    state = ex_get(fp, S_state);
    if (state == NULL)
        goto error;
    if (state != fp->skeleton)
        MISS(0);
    if (mode != fp->auto_) {
        int eq = PyObject_RichCompareBool(mode, fp->auto_, Py_EQ);
        if (eq < 0)
            goto error;
        if (!eq)
            MISS(1);
    }
    PyFrameObject *frame = PyEval_GetFrame();
    if (frame == NULL)
        MISS(2);
    code = (PyObject *)PyFrame_GetCode(frame);
    int lasti = PyFrame_GetLasti(frame);
    cursor = ex_get(fp, S_cursor);
    if (cursor == NULL)
        goto error;
    if (Py_TYPE(cursor) != (PyTypeObject *)fp->node_type)
        MISS(3);
    /* node.hot: the last entry of node.fast this path found, (func, code, lasti, pair); Python
       sets it to None whenever it changes node.fast */
    PyObject *pair = NULL;
    PyObject *hot = NODE(fp, cursor, N_hot);
    if (hot != NULL && PyTuple_CheckExact(hot) && PyTuple_GET_SIZE(hot) == 4 && PyTuple_GET_ITEM(hot, 0) == func
            && PyTuple_GET_ITEM(hot, 1) == code && PyLong_AsLong(PyTuple_GET_ITEM(hot, 2)) == lasti)
        pair = PyTuple_GET_ITEM(hot, 3);
    if (pair == NULL) {
        lasti_obj = PyLong_FromLong(lasti);
        if (lasti_obj == NULL)
            goto error;
        /* node.fast: {(func, id(code), lasti): (code, [nodes])}; the pair holds the code, so
           its id cannot be reused while the entry lives (a code object hashes slowly) */
        PyObject *code_id = PyLong_FromVoidPtr(code);
        if (code_id == NULL)
            goto error;
        key = PyTuple_Pack(3, func, code_id, lasti_obj);
        Py_DECREF(code_id);
        if (key == NULL)
            goto error;
        pair = PyDict_GetItemWithError(NODE(fp, cursor, N_fast), key);
        if (pair != NULL) {
            PyObject *entry = PyTuple_Pack(4, func, code, lasti_obj, pair);
            if (entry == NULL)
                goto error;
            slot_set(cursor, fp->node_off[N_hot], entry);
            Py_DECREF(entry);
            pair = PyTuple_GET_ITEM(entry, 3);  /* (the node holds the entry, the entry the pair) */
        }
    }
    if (pair == NULL) {
        if (PyErr_Occurred())
            goto error;
        /* Not a node: a metadata query (x.dtype, torch.is_complex) or a call the trace found takes
           and returns no tensor (torch._C._set_grad_enabled) runs now, as _on_op runs it. */
        int direct = direct_call(fp, func, args, kwargs, tensors, &result);
        if (direct < 0)
            goto error;
        if (direct) {
            *taken = 1;
            goto out;
        }
        MISS(4);
    }
    if (!PyTuple_CheckExact(pair) || PyTuple_GET_SIZE(pair) != 2 || PyTuple_GET_ITEM(pair, 0) != code)
        MISS(5);
    entries = PyTuple_GET_ITEM(pair, 1);
    Py_INCREF(entries);
    if (!PyList_CheckExact(entries) || PyList_GET_SIZE(entries) == 0)
        MISS(6);

    /* scan: the tensors, the scalars and the spec of the call */
    Py_ssize_t nargs = PyTuple_GET_SIZE(args);
    int has_kwargs = kwargs != NULL && kwargs != Py_None && PyDict_GET_SIZE(kwargs);
    PyObject *e0 = PyList_GET_ITEM(entries, 0);
    int all_tensors = !has_kwargs && nargs <= MAX_TENSORS && node_int(NODE(fp, e0, N_flat)) == nargs;
    for (Py_ssize_t i = 0; all_tensors && i < nargs; i++)
        all_tensors = PyObject_TypeCheck(PyTuple_GET_ITEM(args, i), (PyTypeObject *)fp->tensor_type);
    if (all_tensors) {
        for (Py_ssize_t i = 0; i < nargs; i++)
            tensors[i] = PyTuple_GET_ITEM(args, i);
        nt = nargs;
        spec = PyTuple_GET_ITEM(NODE(fp, e0, N_key), 2);
        Py_INCREF(spec);
        scalars = fp->no_scalars;
        Py_INCREF(scalars);
    } else {
        int over = 0;
        scalars = PyList_New(0);
        if (scalars == NULL)
            goto error;
        spec = scan_seq(fp, args, tensors, &nt, scalars, &over);
        if (spec != NULL && has_kwargs) {
            PyObject *items = PyTuple_New(PyDict_GET_SIZE(kwargs));
            PyObject *k, *v;
            Py_ssize_t pos = 0, i = 0;
            while (items != NULL && PyDict_Next(kwargs, &pos, &k, &v)) {
                PyObject *item = scan_value(fp, v, tensors, &nt, scalars, &over);
                PyObject *pair = item ? PyTuple_Pack(2, k, item) : NULL;
                Py_XDECREF(item);
                if (pair == NULL) {
                    Py_CLEAR(items);
                    break;
                }
                PyTuple_SET_ITEM(items, i++, pair);
            }
            PyObject *both = items ? PyTuple_Pack(2, spec, items) : NULL;
            Py_XDECREF(items);
            Py_SETREF(spec, both);
        }
        if (spec == NULL) {
            if (over)
                MISS(7);
            goto error;
        }
    }
    PyObject *ge = PyObject_Vectorcall(fp->is_grad_enabled, NULL, 0, NULL);
    if (ge == NULL)
        goto error;
    int g = ge == Py_True;
    Py_DECREF(ge);
    PyObject *inf = PyObject_Vectorcall(fp->is_inference, NULL, 0, NULL);
    if (inf == NULL)
        goto error;
    int inference = inf == Py_True;
    Py_DECREF(inf);
    PyObject *grad = fp->grad_table[g][inference];
    PyObject *amp = PyObject_Vectorcall(fp->any_autocast, NULL, 0, NULL);
    if (amp == NULL)
        goto error;
    int amp_on = amp == Py_True;
    Py_DECREF(amp);
    if (amp_on)
        MISS(12);  /* the node key holds autocast's state: the Python path (coexec._grad_key) */
    PyObject *no = Py_False;
    PyObject *hooks = PyObject_Vectorcall(fp->saved_hooks, &no, 1, NULL);
    if (hooks == NULL)
        goto error;
    int hooks_on = hooks != Py_None;
    Py_DECREF(hooks);
    if (hooks_on)
        MISS(14);  /* so does a saved_tensors_hooks region (its ops run for real) */
    PyObject *level = PyObject_Vectorcall(fp->functorch_level, NULL, 0, NULL);
    if (level == NULL)
        goto error;
    int in_transform = level != Py_None;
    Py_DECREF(level);
    if (in_transform)
        MISS(15);  /* CoExecutor.on_op runs the transform's ops now */
    PyObject *modes = PyObject_Vectorcall(fp->dispatch_modes, NULL, 0, NULL);
    if (modes == NULL)
        goto error;
    int moded = modes != fp->zero;
    Py_DECREF(modes);
    if (moded)
        MISS(17);  /* so does a TorchDispatchMode's region (FlopCounterMode): its ops run now */

    Py_ssize_t n_entries = PyList_GET_SIZE(entries);
    for (Py_ssize_t e = 0; e < n_entries; e++) {
        PyObject *node = PyList_GET_ITEM(entries, e);
        if (Py_TYPE(node) != (PyTypeObject *)fp->node_type || NODE(fp, node, N_grad) != grad)
            continue;
        PyObject *mask = NODE(fp, node, N_mask);
        if (!PyFrozenSet_CheckExact(mask))
            MISS(8);
        PyObject *kspec = PyTuple_GET_ITEM(NODE(fp, node, N_key), 2);
        if (PySet_GET_SIZE(mask)) {
            /* generalized ints (feeds): compare the spec with those ints as ops.G */
            Py_ssize_t counter = 0;
            PyObject *gspec = generalize(fp, spec, mask, &counter);
            if (gspec == NULL)
                goto error;
            int eq = PyObject_RichCompareBool(gspec, kspec, Py_EQ);
            Py_DECREF(gspec);
            if (eq < 0)
                goto error;
            if (!eq)
                continue;
        } else if (kspec != spec) {
            int eq = PyObject_RichCompareBool(spec, kspec, Py_EQ);
            if (eq < 0)
                goto error;
            if (!eq)
                continue;
        }
        PyObject *tail = NODE(fp, node, N_tail);
        if (PyTuple_GET_SIZE(tail)) {
            if (!parent_done) {
                parent = (PyObject *)PyFrame_GetBack(frame);
                parent_done = 1;
            }
            if (parent == NULL)
                continue;
            PyObject *ok_parent = ex_get(fp, S_ok_parent);
            PyObject *ok_tail = ex_get(fp, S_ok_tail);
            Py_ssize_t ok_lasti = -2;
            if (ok_parent == NULL || ok_tail == NULL || get_ssize(fp, S_ok_lasti, &ok_lasti) < 0) {
                Py_XDECREF(ok_parent);
                Py_XDECREF(ok_tail);
                goto error;
            }
            int same = parent == ok_parent && tail == ok_tail
                && PyFrame_GetLasti((PyFrameObject *)parent) == ok_lasti;
            Py_DECREF(ok_parent);
            Py_DECREF(ok_tail);
            if (!same) {
                int ok = tail_ok(fp, parent, tail);
                if (ok < 0)
                    goto error;
                if (!ok)
                    continue;
            }
        } else {
            int in = is_root(fp, code);
            if (in < 0)
                goto error;
            if (!in)
                continue;
        }
        PyObject *in_meta = NODE(fp, node, N_in_meta);
        if (!PyTuple_CheckExact(in_meta) || !PyList_CheckExact(NODE(fp, node, N_out_meta))
                || !PyTuple_CheckExact(NODE(fp, node, N_passed)) || !PyList_CheckExact(NODE(fp, node, N_pool))
                || !PyList_CheckExact(NODE(fp, node, N_sources)) || PyList_GET_SIZE(NODE(fp, node, N_sources)) < nt)
            MISS(9);  /* not the shapes this file expects: the Python path */
        Py_ssize_t nm = PyTuple_GET_SIZE(in_meta);
        int ok = 1;
        for (Py_ssize_t i = 0; ok && i < nt && i < nm; i++) {
            ok = meta_matches(fp, tensors[i], PyTuple_GET_ITEM(in_meta, i));
            if (ok < 0)
                goto error;
        }
        if (!ok)
            continue;
        /* validated */
        *taken = 1;
        PyObject *kind = NODE(fp, node, N_kind);
        int deferred = kind == fp->op_kind || kind == fp->effect_kind;
        if (!deferred && PyUnicode_Check(kind))
            deferred = !PyUnicode_Compare(kind, fp->op_kind) || !PyUnicode_Compare(kind, fp->effect_kind);
        PyObject *immediate = NODE(fp, node, N_immediate);
        int now = deferred ? immediate == Py_True : 1;
        if (deferred && immediate == fp->grad_read) {
            now = grad_read_now(fp, tensors, nt, &real);
            if (now < 0)
                goto error;
        } else if (deferred && (immediate == fp->check_index || immediate == fp->check_scalars)) {
            now = 1;  /* CoExecutor._validated_op checks the index's range (the numbers): it defers or runs the op */
        } else if (deferred && immediate == fp->check_view) {
            now = view_unknown(fp, node, tensors, nt);  /* (coexec._views: 0 where it defers) */
            if (now < 0)
                goto error;
        }
        int local = 0;
        if (now && (deferred ? immediate == Py_True : kind == fp->fetch_kind)) {
            /* an immediate op (deferred unless its tensors are local) or a fetch of local tensors */
            local = all_local(tensors, nt, fp->future_type);
            if (local < 0)
                goto error;
            if (deferred)
                now = local;
            if (local) {
                PyObject *runner = ex_get(fp, S_runner);
                PyObject *captured = runner ? PyObject_GetAttr(runner, str[S_captured]) : NULL;
                Py_XDECREF(runner);
                if (captured == NULL)
                    goto error;
                local = captured == Py_None;  /* (the graph-only capture: the Python path) */
                Py_DECREF(captured);
            }
        }
        if (!now) {
            result = defer(fp, node, tensors, nt, scalars);
            if (result != NULL && nt > 0 && Py_TYPE(tensors[0]) != (PyTypeObject *)fp->future_type) {
                /* the gradient table follows what the program gets for a real tensor's .grad */
                if (immediate == fp->grad_read)
                    result = grad_object(fp, tensors[0], result, real);
                else if (node_int(NODE(fp, node, N_grad_op)) == 1 && grad_set(fp, tensors, nt) < 0)
                    Py_CLEAR(result);
            }
        } else if (local && !PyFunction_Check(func)) {  /* (a Python-level one: as in the eager branch) */
            result = run_local(fp, node, func, args, kwargs, tensors, nt, scalars, (PyObject *)frame);
        } else {
            tlist = PyList_New(nt);
            if (tlist == NULL)
                goto error;
            for (Py_ssize_t i = 0; i < nt; i++) {
                Py_INCREF(tensors[i]);
                PyList_SET_ITEM(tlist, i, tensors[i]);
            }
            PyObject *argv[8] = {ex, node, func, args, kwargs ? kwargs : Py_None, tlist, scalars, (PyObject *)frame};
            result = PyObject_VectorcallMethod(str[S_validated_op], argv, 8, NULL);
        }
        goto out;
    }
    fp->misses[10]++;  /* no entry matched */
out:
    Py_XDECREF(state);
    Py_XDECREF(mode);
    Py_XDECREF(cursor);
    Py_XDECREF(key);
    Py_XDECREF(spec);
    Py_XDECREF(scalars);
    Py_XDECREF(parent);
    Py_XDECREF(code);
    Py_XDECREF(lasti_obj);
    Py_XDECREF(entries);
    Py_XDECREF(tlist);
    Py_XDECREF(real);
    if (tensors != stack_tensors)
        PyMem_Free(tensors);
    return result;
error:
    *taken = 1;
    result = NULL;
    goto out;
}

static double
thread_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Add a deferred op's thread CPU time to profile[iteration] = [seconds, ops] (ProfilingMode). */
static int
profile_add(FastPath *fp, double seconds)
{
    PyObject *it = ex_get(fp, S_iter_index);
    if (it == NULL)
        return -1;
    PyObject *acc = PyDict_GetItemWithError(fp->profile, it);
    if (acc == NULL) {
        if (PyErr_Occurred()) {
            Py_DECREF(it);
            return -1;
        }
        acc = Py_BuildValue("[di]", 0.0, 0);
        if (acc == NULL || PyDict_SetItem(fp->profile, it, acc) < 0) {
            Py_XDECREF(acc);
            Py_DECREF(it);
            return -1;
        }
        Py_DECREF(acc);
    }
    Py_DECREF(it);
    PyObject *s = PyFloat_FromDouble(PyFloat_AsDouble(PyList_GET_ITEM(acc, 0)) + seconds);
    PyObject *n = PyLong_FromSsize_t(PyLong_AsSsize_t(PyList_GET_ITEM(acc, 1)) + 1);
    if (s == NULL || n == NULL) {
        Py_XDECREF(s);
        Py_XDECREF(n);
        return -1;
    }
    PyList_SetItem(acc, 0, s);
    PyList_SetItem(acc, 1, n);
    return 0;
}

/* executor.runner.inline_seconds: thread time of the blocks run in the program's thread */
static int
inline_seconds(FastPath *fp, double *out)
{
    PyObject *runner = ex_get(fp, S_runner);
    PyObject *v = runner ? PyObject_GetAttr(runner, str[S_inline_seconds]) : NULL;
    Py_XDECREF(runner);
    if (v == NULL)
        return -1;
    *out = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return PyErr_Occurred() ? -1 : 0;
}

/* Called as the mode's bound method: (mode, func, types, args[, kwargs]). */
static PyObject *
fp_vectorcall(PyObject *self, PyObject *const *argv, size_t nargsf, PyObject *kwnames)
{
    FastPath *fp = (FastPath *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || nargs < 4 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "expected (mode, func, types, args[, kwargs])");
        return NULL;
    }
    PyObject *func = argv[1], *types = argv[2], *args = argv[3];
    PyObject *kwargs = nargs == 5 ? argv[4] : NULL;
    int profiling = fp->profile != Py_None;
    Py_ssize_t before = 0;
    double t0 = 0.0, blocks0 = 0.0, blocks1 = 0.0;
    if (profiling) {
        if (get_ssize(fp, S_deferred_total, &before) < 0 || inline_seconds(fp, &blocks0) < 0)
            return NULL;
        t0 = thread_seconds();
    }
    int taken;
    fp->in_op++;
    PyObject *r = fast(fp, func, args, kwargs, &taken);
    fp->in_op--;
    if (!taken)
        r = call_slow(fp, func, types, args, kwargs);
    if (profiling && r != NULL) {
        Py_ssize_t after;
        double t1 = thread_seconds();
        if (get_ssize(fp, S_deferred_total, &after) < 0 || inline_seconds(fp, &blocks1) < 0
                || (after != before && profile_add(fp, t1 - t0 - (blocks1 - blocks0)) < 0)) {
            Py_DECREF(r);
            return NULL;
        }
    }
    return r;
}

static int
fp_traverse(FastPath *fp, visitproc visit, void *arg)
{
    Py_VISIT(fp->executor);
    Py_VISIT(fp->slow);
    Py_VISIT(fp->make_future);
    Py_VISIT(fp->shares_memory);
    Py_VISIT(fp->profile);
    return 0;
}

static int
fp_clear(FastPath *fp)
{
    Py_CLEAR(fp->executor);
    Py_CLEAR(fp->slow);
    Py_CLEAR(fp->node_type);
    Py_CLEAR(fp->block_type);
    Py_CLEAR(fp->future_type);
    Py_CLEAR(fp->tensor_type);
    Py_CLEAR(fp->info_type);
    Py_CLEAR(fp->generator_type);
    Py_CLEAR(fp->numpy_scalars);
    Py_CLEAR(fp->size_type);
    Py_CLEAR(fp->parameter_type);
    Py_CLEAR(fp->skeleton);
    Py_CLEAR(fp->auto_);
    Py_CLEAR(fp->eager_);
    Py_CLEAR(fp->op_kind);
    Py_CLEAR(fp->fetch_kind);
    Py_CLEAR(fp->effect_kind);
    for (int g = 0; g < 2; g++)
        for (int i = 0; i < 2; i++)
            Py_CLEAR(fp->grad_table[g][i]);
    Py_CLEAR(fp->tensor_struct);
    Py_CLEAR(fp->none_struct);
    Py_CLEAR(fp->external);
    Py_CLEAR(fp->make_future);
    Py_CLEAR(fp->build_out);
    Py_CLEAR(fp->marker_t);
    Py_CLEAR(fp->marker_f);
    Py_CLEAR(fp->marker_g);
    Py_CLEAR(fp->marker_fn);
    Py_CLEAR(fp->marker_mut);
    Py_CLEAR(fp->no_scalars);
    Py_CLEAR(fp->is_grad_enabled);
    Py_CLEAR(fp->is_inference);
    Py_CLEAR(fp->any_autocast);
    Py_CLEAR(fp->saved_hooks);
    Py_CLEAR(fp->functorch_level);
    Py_CLEAR(fp->dispatch_modes);
    Py_CLEAR(fp->zero);
    Py_CLEAR(fp->run_meta);
    Py_CLEAR(fp->grad_read);
    Py_CLEAR(fp->check_index);
    Py_CLEAR(fp->shares_memory);
    Py_CLEAR(fp->check_view);
    Py_CLEAR(fp->check_scalars);
    Py_CLEAR(fp->unfollowed);
    Py_CLEAR(fp->canon);
    Py_CLEAR(fp->block_run_type);
    Py_CLEAR(fp->canonical_offsets);
    Py_CLEAR(fp->profile);
    return 0;
}

static void
fp_dealloc(FastPath *fp)
{
    PyObject_GC_UnTrack(fp);
    fp_clear(fp);
    Py_TYPE(fp)->tp_free((PyObject *)fp);
}

/* FastPath(executor, slow, consts): consts is a dict of the Python path's constants and helpers. */
static PyObject *
fp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *executor, *slow, *c;
    if (!PyArg_ParseTuple(args, "OOO!", &executor, &slow, &PyDict_Type, &c))
        return NULL;
    FastPath *fp = (FastPath *)type->tp_alloc(type, 0);
    if (fp == NULL)
        return NULL;
    fp->vectorcall = fp_vectorcall;
#define TAKE(field, name) do { \
        PyObject *v_ = PyDict_GetItemString(c, name); \
        if (v_ == NULL) { PyErr_Format(PyExc_KeyError, "FastPath needs %s", name); Py_DECREF(fp); return NULL; } \
        Py_INCREF(v_); fp->field = v_; } while (0)
    Py_INCREF(executor);
    fp->executor = executor;
    Py_INCREF(slow);
    fp->slow = slow;
    TAKE(node_type, "Node");
    TAKE(block_type, "PendingBlock");
    TAKE(future_type, "FutureTensor");
    TAKE(info_type, "OpInfo");
    TAKE(generator_type, "Generator");
    TAKE(numpy_scalars, "NUMPY_SCALARS");
    TAKE(size_type, "Size");
    if (!PyDict_Check(fp->numpy_scalars)) {
        PyErr_SetString(PyExc_TypeError, "FastPath needs NUMPY_SCALARS as a dict");
        Py_DECREF(fp);
        return NULL;
    }
    TAKE(tensor_type, "Tensor");
    TAKE(parameter_type, "Parameter");
    TAKE(skeleton, "SKELETON");
    TAKE(auto_, "auto");
    TAKE(eager_, "eager");
    TAKE(op_kind, "op");
    TAKE(fetch_kind, "fetch");
    TAKE(effect_kind, "effect");
    TAKE(grad_table[0][0], "grad00");
    TAKE(grad_table[0][1], "grad01");
    TAKE(grad_table[1][0], "grad10");
    TAKE(grad_table[1][1], "grad11");
    TAKE(tensor_struct, "TENSOR");
    TAKE(none_struct, "NONE");
    TAKE(external, "EXTERNAL");
    TAKE(make_future, "make_future");
    TAKE(build_out, "build_out");
    TAKE(marker_t, "T");
    TAKE(marker_f, "F");
    TAKE(marker_g, "G");
    TAKE(marker_fn, "FN");
    TAKE(marker_mut, "MUT");
    TAKE(is_grad_enabled, "is_grad_enabled");
    TAKE(is_inference, "is_inference");
    TAKE(any_autocast, "any_autocast");
    TAKE(saved_hooks, "saved_hooks");
    TAKE(functorch_level, "functorch_level");
    TAKE(dispatch_modes, "dispatch_modes");
    TAKE(zero, "zero");
    TAKE(run_meta, "run_meta");
    TAKE(grad_read, "GRAD_READ");
    TAKE(check_index, "CHECK_INDEX");
    TAKE(shares_memory, "shares_memory");
    TAKE(check_view, "CHECK_VIEW");
    TAKE(check_scalars, "CHECK_SCALARS");
    TAKE(unfollowed, "UNFOLLOWED");
    TAKE(canon, "CANON");
    TAKE(block_run_type, "BlockRun");
    TAKE(canonical_offsets, "canonical_offsets");
#undef TAKE
    /* The executor's attributes that this file reads and writes are slots of its class (CoExecutor
       declares them in __slots__): read and written by offset, as the nodes' are. */
    for (int i = 0; i < N_EXECUTOR_SLOTS; i++) {
        const char *name[1] = {NAMES[EXECUTOR_SLOTS[i]]};
        if (slot_offsets((PyObject *)Py_TYPE(executor), name, &fp->ex_off[EXECUTOR_SLOTS[i]], 1) < 0) {
            Py_DECREF(fp);
            return NULL;
        }
    }
    fp->no_scalars = PyList_New(0);
    Py_INCREF(Py_None);
    fp->profile = Py_None;
    if (fp->no_scalars == NULL
            || slot_offsets(fp->node_type, NODE_SLOTS, fp->node_off, N_NSLOTS) < 0
            || slot_offsets(fp->block_type, BLOCK_SLOTS, fp->block_off, B_NSLOTS) < 0
            || slot_offsets(fp->future_type, FUTURE_SLOTS, fp->future_off, U_NSLOTS) < 0
            || slot_offsets(fp->info_type, &NAMES[S_prop], &fp->info_prop_off, 1) < 0
            || slot_offsets(fp->info_type, &NAMES[S_setter], &fp->info_setter_off, 1) < 0) {
        Py_DECREF(fp);
        return NULL;
    }
    pooled_type = (PyTypeObject *)fp->future_type;  /* (the module holds the type: see future_type) */
    pooled_off = fp->future_off[U_pooled];
    return (PyObject *)fp;
}

static PyObject *live_outputs(PyObject *module, PyObject *futs);

/* CoExecutor._take_run: the pending block as a BlockRun of its compiled block (None when empty);
 * a new pending block begins. */
static PyObject *
fp_take_run(FastPath *fp, PyObject *unused)
{
    PyObject *blk = NULL, *futs = NULL, *outputs = NULL, *key = NULL, *compiled = NULL, *run = NULL;
    PyObject *out_futs = NULL, *tmp = NULL;
    blk = ex_get(fp, S_block);
    if (blk == NULL)
        return NULL;
    if (Py_TYPE(blk) != (PyTypeObject *)fp->block_type) {
        PyErr_SetString(PyExc_TypeError, "the executor's block is not a PendingBlock");
        goto done;
    }
    if (PyList_GET_SIZE(BLK(fp, blk, B_ops)) == 0) {
        run = Py_None;
        Py_INCREF(run);
        goto done;
    }
    /* a frame kept for the fast path must not keep the user's tensors alive */
    if (ex_set(fp, S_ok_parent, Py_None) < 0)
        goto done;
    futs = BLK(fp, blk, B_futs);
    Py_INCREF(futs);
    /* a future is an output when the program still holds it (see live_outputs) */
    outputs = live_outputs(NULL, futs);
    if (outputs == NULL || (tmp = PyList_New(0)) == NULL)
        goto done;
    slot_set(blk, fp->block_off[B_futs], tmp);
    Py_CLEAR(tmp);
    tmp = PyList_AsTuple(BLK(fp, blk, B_ops));
    if (tmp == NULL)
        goto done;
    key = Py_BuildValue("(OnO)", tmp, PyList_GET_SIZE(BLK(fp, blk, B_inputs)), outputs);
    Py_CLEAR(tmp);
    if (key == NULL || (tmp = ex_get(fp, S_compiled)) == NULL)
        goto done;
    compiled = PyDict_GetItemWithError(tmp, key);
    Py_XINCREF(compiled);
    Py_CLEAR(tmp);
    if (compiled == NULL) {
        if (PyErr_Occurred())
            goto done;
        compiled = PyObject_CallMethodOneArg(fp->executor, str[S_new_block], key);
        if (compiled == NULL)
            goto done;
    }
    tmp = PyObject_CallNoArgs(fp->block_type);
    if (tmp == NULL || ex_set(fp, S_block, tmp) < 0 || add_ssize(fp, S_iter_blocks, 1) < 0)
        goto done;
    Py_CLEAR(tmp);
    Py_ssize_t n = PyTuple_GET_SIZE(outputs);
    out_futs = PyList_New(n);
    if (out_futs == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *fut = PyList_GET_ITEM(futs, PyLong_AsSsize_t(PyTuple_GET_ITEM(outputs, i)));
        Py_INCREF(fut);
        PyList_SET_ITEM(out_futs, i, fut);
    }
    {
        PyObject *ids = ex_get(fp, S_block_ids);
        PyObject *cid = ids ? PyLong_FromVoidPtr(compiled) : NULL;
        PyObject *bid = cid ? PyObject_GetItem(ids, cid) : NULL;
        PyObject *cell = bid ? ex_get(fp, S_cell) : NULL;
        PyObject *it = cell ? ex_get(fp, S_iter_index) : NULL;
        if (it != NULL) {
            PyObject *argv[7] = {compiled, bid, BLK(fp, blk, B_inputs), BLK(fp, blk, B_floats), out_futs, cell, it};
            run = PyObject_Vectorcall(fp->block_run_type, argv, 7, NULL);
        }
        Py_XDECREF(ids);
        Py_XDECREF(cid);
        Py_XDECREF(bid);
        Py_XDECREF(cell);
        Py_XDECREF(it);
        if (run == NULL)
            goto done;
    }
    /* The old block lives on as the identity its futures name (_tn_blk): it holds nothing. */
    {
        PyObject *inputs = PyList_New(0), *ids = PyDict_New(), *floats = PyList_New(0), *ops = PyList_New(0);
        if (inputs && ids && floats && ops) {
            slot_set(blk, fp->block_off[B_inputs], inputs);
            slot_set(blk, fp->block_off[B_input_ids], ids);
            slot_set(blk, fp->block_off[B_floats], floats);
            slot_set(blk, fp->block_off[B_ops], ops);
        } else {
            Py_CLEAR(run);
        }
        Py_XDECREF(inputs);
        Py_XDECREF(ids);
        Py_XDECREF(floats);
        Py_XDECREF(ops);
    }
done:
    Py_XDECREF(blk);
    Py_XDECREF(futs);
    Py_XDECREF(outputs);
    Py_XDECREF(key);
    Py_XDECREF(compiled);
    Py_XDECREF(out_futs);
    Py_XDECREF(tmp);
    return run;
}

static PyMethodDef fp_methods[] = {
    {"take_run", (PyCFunction)fp_take_run, METH_NOARGS, "CoExecutor._take_run, in C"},
    {NULL},
};

static PyObject *
fp_get_profile(FastPath *fp, void *closure)
{
    Py_INCREF(fp->profile);
    return fp->profile;
}

static int
fp_set_profile(FastPath *fp, PyObject *value, void *closure)
{
    if (value == NULL || (value != Py_None && !PyDict_Check(value))) {
        PyErr_SetString(PyExc_TypeError, "profile is None or a dict");
        return -1;
    }
    Py_INCREF(value);
    Py_SETREF(fp->profile, value);
    return 0;
}

static PyObject *
fp_call_tp(PyObject *self, PyObject *args, PyObject *kwargs)
{
    return PyVectorcall_Call(self, args, kwargs);
}

static PyObject *
fp_get_misses(FastPath *fp, void *closure)
{
    PyObject *d = PyDict_New();
    for (int i = 0; d != NULL && i < N_MISSES; i++) {
        if (!fp->misses[i])
            continue;
        PyObject *n = PyLong_FromUnsignedLongLong(fp->misses[i]);
        if (n == NULL || PyDict_SetItemString(d, MISS_REASONS[i], n) < 0)
            Py_CLEAR(d);
        Py_XDECREF(n);
    }
    return d;
}

static PyObject *
fp_get_interrupt(FastPath *fp, void *closure)
{
    return PyBool_FromLong(fp->interrupt);
}

static int
fp_set_interrupt(FastPath *fp, PyObject *value, void *closure)
{
    int v = value == NULL ? 0 : PyObject_IsTrue(value);
    if (v < 0)
        return -1;
    fp->interrupt = v;
    return 0;
}

static PyObject *
fp_get_in_op(FastPath *fp, void *closure)
{
    return PyBool_FromLong(fp->in_op > 0);
}

static PyGetSetDef fp_getset[] = {
    {"in_op", (getter)fp_get_in_op, NULL,
     "True while a call is inside this path (its Python callouts included)", NULL},
    {"interrupt", (getter)fp_get_interrupt, (setter)fp_set_interrupt,
     "True while an interrupt waits to be raised at the next call (every call goes to the Python path)", NULL},
    {"misses", (getter)fp_get_misses, NULL, "the calls handed to the Python path, by reason", NULL},
    {"profile", (getter)fp_get_profile, (setter)fp_set_profile,
     "None, or a dict {iteration: [thread seconds, deferred ops]} that every deferred op adds to", NULL},
    {NULL},
};

static PyTypeObject FastPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "terra_nb.runtime._fastpath.FastPath",
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(FastPath, vectorcall),
    .tp_call = fp_call_tp,
    .tp_new = fp_new,
    .tp_dealloc = (destructor)fp_dealloc,
    .tp_traverse = (traverseproc)fp_traverse,
    .tp_clear = (inquiry)fp_clear,
    .tp_getset = fp_getset,
    .tp_methods = fp_methods,
    .tp_doc = "The skeleton's hot path; install as a bound method: MethodType(FastPath(...), mode).",
};

/* live_outputs(futs): the indices of the futures the program still holds (CoExecutor._take_run):
 * more references than the list's and, while its node's ring keeps it, the ring's. */
static PyObject *
live_outputs(PyObject *module, PyObject *futs)
{
    if (!PyList_CheckExact(futs)) {
        PyErr_SetString(PyExc_TypeError, "live_outputs takes a list");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(futs);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *fut = PyList_GET_ITEM(futs, i);
        if (pooled_type == NULL || Py_TYPE(fut) != pooled_type) {
            PyErr_SetString(PyExc_TypeError, "live_outputs takes the futures of a FastPath's blocks");
            Py_DECREF(out);
            return NULL;
        }
        PyObject *pooled = SLOT(fut, pooled_off);
        Py_ssize_t held = 1 + (pooled == Py_True);
        if (Py_REFCNT(fut) > held) {
            PyObject *k = PyLong_FromSsize_t(i);
            if (k == NULL || PyList_Append(out, k) < 0) {
                Py_XDECREF(k);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(k);
        }
    }
    PyObject *t = PyList_AsTuple(out);
    Py_DECREF(out);
    return t;
}

/* scan(fastpath, args, kwargs) -> (spec, tensors, scalars): the C scan, as ops.scan returns it. */
static PyObject *
scan_py(PyObject *module, PyObject *argv)
{
    PyObject *fpo, *args, *kwargs;
    if (!PyArg_ParseTuple(argv, "O!O!O", &FastPathType, &fpo, &PyTuple_Type, &args, &kwargs))
        return NULL;
    FastPath *fp = (FastPath *)fpo;
    PyObject *tensors[MAX_TENSORS];
    Py_ssize_t nt = 0;
    int over = 0;
    PyObject *scalars = PyList_New(0);
    PyObject *spec = scalars ? scan_seq(fp, args, tensors, &nt, scalars, &over) : NULL;
    if (spec != NULL && PyDict_Check(kwargs) && PyDict_GET_SIZE(kwargs)) {
        PyObject *items = PyList_New(0);
        PyObject *k, *v;
        Py_ssize_t pos = 0;
        while (items != NULL && PyDict_Next(kwargs, &pos, &k, &v)) {
            PyObject *item = scan_value(fp, v, tensors, &nt, scalars, &over);
            PyObject *pair = item ? PyTuple_Pack(2, k, item) : NULL;
            Py_XDECREF(item);
            if (pair == NULL || PyList_Append(items, pair) < 0)
                Py_CLEAR(items);
            Py_XDECREF(pair);
        }
        PyObject *t = items ? PyList_AsTuple(items) : NULL;
        Py_XDECREF(items);
        PyObject *both = t ? PyTuple_Pack(2, spec, t) : NULL;
        Py_XDECREF(t);
        Py_SETREF(spec, both);
    }
    if (spec == NULL) {
        Py_XDECREF(scalars);
        if (over && !PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "more tensors than the C path takes");
        return NULL;
    }
    PyObject *tl = PyList_New(nt);
    for (Py_ssize_t i = 0; tl != NULL && i < nt; i++) {
        Py_INCREF(tensors[i]);
        PyList_SET_ITEM(tl, i, tensors[i]);
    }
    PyObject *r = tl ? PyTuple_Pack(3, spec, tl, scalars) : NULL;
    Py_DECREF(spec);
    Py_XDECREF(tl);
    Py_DECREF(scalars);
    return r;
}

static PyMethodDef functions[] = {
    {"scan", scan_py, METH_VARARGS, "scan(fastpath, args, kwargs) -> (spec, tensors, scalars), as ops.scan"},
    {"live_outputs", live_outputs, METH_O, "the indices of the futures the program still holds"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "The skeleton's hot path in C (see coexec.py for the reference).", -1, functions,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    for (int i = 0; i < N_NAMES; i++) {
        str[i] = PyUnicode_InternFromString(NAMES[i]);
        if (str[i] == NULL)
            return NULL;
    }
    if (PyType_Ready(&FastPathType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FastPathType);
    if (PyModule_AddObject(m, "FastPath", (PyObject *)&FastPathType) < 0) {
        Py_DECREF(&FastPathType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
