"""Host-side helpers in C++ that read many tensors from Python lists in one call (optional).

- ``gather``: the per-step check of a steady group (``algorithms/_steady.py``).
- ``addresses``: the data pointers of one-element CPU tensors of one dtype (per-parameter 0-d
  state such as step counters, ASGD's ``eta``/``mu``, NAdam's ``mu_product``), for the native
  reads and writes of ``backends/cpu/steps.py``.

A steady step must confirm, for every parameter, that the tensors its plan was
built for are still the ones in place: the same parameter at the same address with the same
size, a dense contiguous gradient (whose address it needs), and the same state tensors at the
same addresses. In Python that is a dozen calls per parameter, each touching a tensor; over
thousands of small tensors it is most of the step's host time. This module compiles the same
check into one C++ function (with torch's headers, like any torch extension) that reads each
tensor once, writes the gradients' addresses into a buffer and never creates a Python object
per gradient.

It is an accelerator only: where it cannot be built (no C++ compiler, no Python or torch
headers, ``GRADSTEP_NATIVE=0``) the same checks run in Python, with the same results; they also
run while the module is being built, in the background, once per machine, torch and Python
version (kept in the compiler cache of the fused CPU backend).
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
import threading
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised
    fcntl = None

from .backends.cpu import compiler

_SOURCE = r"""
// gradstep: host-side helpers over lists of tensors (see _native.py).
#include <Python.h>
#include <torch/csrc/autograd/python_variable.h>
#include <cstdint>

namespace {

bool at_address(PyObject* obj, uint64_t ptr) {
  return THPVariable_Check(obj) &&
         reinterpret_cast<uint64_t>(THPVariable_Unpack(obj).data_ptr()) == ptr;
}

// The same object (by id) at the same address, looked up in a state dict.
bool same_state(PyObject* st, PyObject* key, uint64_t id, uint64_t ptr) {
  PyObject* v = PyDict_GetItemWithError(st, key);
  return v != nullptr && reinterpret_cast<uint64_t>(v) == id && at_address(v, ptr);
}

// ``(states, counters)``, new lists of the state dicts and step counters (None without
// ``step_key``) of the group's params that ``stepped`` marks, if the group is as ``expect``
// describes; else None. The marked params (``n``) have a dense contiguous gradient, the others
// none. ``expect`` holds, as uint64, for the marked params: their addresses and sizes; their
// state tensors' addresses then ids (role after role); their step counters' addresses then ids
// (with ``step_key``).
PyObject* check(PyObject* params, PyObject* plan_params, const uint8_t* stepped, Py_ssize_t n,
                PyObject* state, PyObject* keys, PyObject* step_key, const uint64_t* expect,
                uint64_t* grad_ptrs) {
  const Py_ssize_t k = PyTuple_GET_SIZE(keys);
  const uint64_t *p_ptr = expect, *p_numel = expect + n;
  const uint64_t *s_ptr = p_numel + n, *s_id = s_ptr + k * n;
  const uint64_t *c_ptr = s_id + k * n, *c_id = c_ptr + n;
  const bool counted = step_key != Py_None;
  PyObject* states = PyList_New(n);
  PyObject* counters = counted ? PyList_New(n) : Py_NewRef(Py_None);
  if (states == nullptr || counters == nullptr) {
    Py_XDECREF(states);
    Py_XDECREF(counters);
    return nullptr;
  }
  try {
    Py_ssize_t i = 0;  // among the marked params
    for (Py_ssize_t a = 0; a < PyList_GET_SIZE(params); ++a) {
      PyObject* p = PyList_GET_ITEM(params, a);
      if (p != PyList_GET_ITEM(plan_params, a) || !THPVariable_Check(p)) goto changed;
      const at::Tensor& t = THPVariable_Unpack(p);
      if (!stepped[a]) {  // a param without a gradient (e.g. a frozen one) must stay so
        if (t.grad().defined()) goto changed;
        continue;
      }
      if (i == n) goto changed;
      if (reinterpret_cast<uint64_t>(t.data_ptr()) != p_ptr[i] ||
          static_cast<uint64_t>(t.numel()) != p_numel[i]) goto changed;
      const at::Tensor& g = t.grad();
      if (!g.defined() || g.layout() != c10::kStrided || !g.is_contiguous()) goto changed;
      grad_ptrs[i] = reinterpret_cast<uint64_t>(g.data_ptr());
      if (k == 0 && !counted) {  // an algorithm without state (SGD without momentum)
        PyList_SET_ITEM(states, i++, PyDict_New());
        continue;
      }
      PyObject* st = PyDict_GetItemWithError(state, p);
      if (st == nullptr || !PyDict_Check(st)) goto changed;
      for (Py_ssize_t j = 0; j < k; ++j) {
        if (!same_state(st, PyTuple_GET_ITEM(keys, j), s_id[j * n + i], s_ptr[j * n + i])) goto changed;
      }
      if (counted) {
        if (!same_state(st, step_key, c_id[i], c_ptr[i])) goto changed;
        PyList_SET_ITEM(counters, i, Py_NewRef(reinterpret_cast<PyObject*>(c_id[i])));
      }
      PyList_SET_ITEM(states, i, Py_NewRef(st));
      ++i;
    }
    if (i != n) goto changed;
  } catch (...) {  // e.g. a tensor without storage: not a steady group
    goto changed;
  }
  {
    PyObject* found = PyTuple_Pack(2, states, counters);  // (takes references of its own)
    Py_DECREF(states);
    Py_DECREF(counters);
    return found;
  }
changed:
  PyErr_Clear();
  Py_DECREF(states);
  Py_DECREF(counters);
  Py_RETURN_NONE;
}

// gather(params, plan_params, stepped, state, keys, step_key, expect, grad_ptrs) -> tuple | None
PyObject* gather(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 8 || !PyList_Check(args[1]) || !PyBytes_Check(args[2]) || !PyTuple_Check(args[4]) ||
      !(args[5] == Py_None || PyUnicode_Check(args[5])) ||
      PyBytes_GET_SIZE(args[2]) != PyList_GET_SIZE(args[1])) {
    PyErr_SetString(PyExc_TypeError,
                    "gather(list, list, bytes, dict, tuple, str | None, buffer, buffer)");
    return nullptr;
  }
  // a group whose params are not a list, an optimizer whose state is not a dict: not steady
  if (!PyList_Check(args[0]) || !PyDict_Check(args[3]) ||
      PyList_GET_SIZE(args[0]) != PyList_GET_SIZE(args[1])) Py_RETURN_NONE;
  Py_buffer expect, out;
  if (PyObject_GetBuffer(args[6], &expect, PyBUF_SIMPLE) < 0) return nullptr;
  if (PyObject_GetBuffer(args[7], &out, PyBUF_WRITABLE) < 0) {
    PyBuffer_Release(&expect);
    return nullptr;
  }
  const Py_ssize_t n = out.len / 8, k = PyTuple_GET_SIZE(args[4]);
  const Py_ssize_t words = n * (2 + 2 * k + (args[5] == Py_None ? 0 : 2));
  PyObject* result;
  if (expect.len != words * 8 || out.len != n * 8) {
    PyErr_SetString(PyExc_ValueError, "gather: buffer sizes do not match the plan");
    result = nullptr;
  } else {
    result = check(args[0], args[1], reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(args[2])),
                   n, args[3], args[4], args[5], static_cast<const uint64_t*>(expect.buf),
                   static_cast<uint64_t*>(out.buf));
  }
  PyBuffer_Release(&expect);
  PyBuffer_Release(&out);
  return result;
}

// addresses(tensors, float64, out) -> bool: whether every item of the list is a one-element CPU
// tensor of float32 (float64 if the flag is true); if so, their data pointers are in ``out``.
PyObject* addresses(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3 || !PyList_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "addresses(list, bool, buffer)");
    return nullptr;
  }
  const Py_ssize_t n = PyList_GET_SIZE(args[0]);
  const c10::ScalarType want = PyObject_IsTrue(args[1]) ? c10::kDouble : c10::kFloat;
  Py_buffer out;
  if (PyObject_GetBuffer(args[2], &out, PyBUF_WRITABLE) < 0) return nullptr;
  bool ok = out.len == n * 8;
  try {
    for (Py_ssize_t i = 0; ok && i < n; ++i) {
      PyObject* obj = PyList_GET_ITEM(args[0], i);
      if (!THPVariable_Check(obj)) { ok = false; break; }
      const at::Tensor& t = THPVariable_Unpack(obj);
      ok = t.device().is_cpu() && t.scalar_type() == want && t.numel() == 1;
      if (ok) static_cast<uint64_t*>(out.buf)[i] = reinterpret_cast<uint64_t>(t.data_ptr());
    }
  } catch (...) {
    ok = false;
  }
  PyBuffer_Release(&out);
  return PyBool_FromLong(ok);
}

PyMethodDef methods[] = {
    {"gather", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(gather)), METH_FASTCALL, nullptr},
    {"addresses", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(addresses)), METH_FASTCALL, nullptr},
    {nullptr, nullptr, 0, nullptr}};
PyModuleDef module = {PyModuleDef_HEAD_INIT, "gradstep_native", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit_gradstep_native(void) { return PyModule_Create(&module); }
"""

_lock = threading.Lock()
_module = None  # the compiled module, once built
_builder: threading.Thread | None = None


def _toolchain() -> compiler.Toolchain:
    """torch's headers and libraries, this Python's headers, and torch's C++ ABI."""
    root = Path(torch.__file__).parent
    lib = root / "lib"
    flags = (
        "-O2", "-std=c++20", "-shared", "-fPIC", "-w",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        f"-I{sysconfig.get_paths()['include']}",
        f"-I{root / 'include'}",
        f"-I{root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
    )
    libs = (f"-L{lib}", "-ltorch_python", "-ltorch", "-lc10", f"-Wl,-rpath,{lib}")
    return compiler.Toolchain(flags, ".cpp", libs)


@contextlib.contextmanager
def _one_build_at_a_time():
    """Hold a lock file in the compiler cache while building: the ranks of a distributed job
    share the cache, and each compile of torch's headers takes about a gigabyte of memory, so
    one process compiles while the others wait for its result (in their background threads)."""
    directory = compiler.cache_dir()
    if directory is None or fcntl is None:
        yield
        return
    with open(directory / "native.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build():
    # the versions go into the source, hence into the cache key
    source = f"// torch {torch.__version__}, Python {sys.version.split()[0]}\n" + _SOURCE
    with _one_build_at_a_time():
        path, keep = compiler.build(source, compiler.compiler("CXX", ("g++", "c++")), _toolchain())
    loader = importlib.machinery.ExtensionFileLoader("gradstep_native", str(path))
    spec = importlib.util.spec_from_file_location("gradstep_native", str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    module._gradstep_keep = keep  # a private build directory lives as long as the module
    return module


#: lists of fewer tensors do not start the build (their Python checks are cheap enough)
WORTH_BUILDING = 64


def ready(n_tensors: int = WORTH_BUILDING):
    """The compiled module if it is built, else None (the Python versions run meanwhile).

    The first call for a list of at least ``WORTH_BUILDING`` tensors starts the build in a
    background thread (10-15 s of compiling, once per machine), so that no step waits for it;
    ``GRADSTEP_NATIVE=0`` turns it off."""
    if _module is None and _builder is None and n_tensors >= WORTH_BUILDING:
        _start()
    return _module


def _start() -> None:
    """Start the build thread (once); with ``GRADSTEP_NATIVE=0`` a thread that builds nothing,
    so that the variable is read once, not at every step."""
    global _builder
    with _lock:
        if _builder is not None:
            return
        off = os.environ.get("GRADSTEP_NATIVE", "1") == "0"
        _builder = threading.Thread(target=None if off else _build_quietly,
                                    name="gradstep-native-build", daemon=True)
        _builder.start()


def _build_quietly() -> None:
    global _module
    try:
        _module = _build()
    except Exception:  # no compiler or headers, an unusual platform: the Python check stays
        pass


def _after_fork_in_child() -> None:
    """A forked child has none of its parent's threads: forget a build that was running in the
    parent (the child may start its own), and a lock the fork may have caught held."""
    global _lock, _builder
    _lock = threading.Lock()
    if _module is None:
        _builder = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def wait(timeout: float | None = None):
    """Start the build if needed and wait for it (tests, benchmarks): ``ready()`` afterwards."""
    ready()
    if _builder is not None:
        _builder.join(timeout)
    return _module
