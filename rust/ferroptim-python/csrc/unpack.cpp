// The `at::Tensor` inside a `torch.Tensor` Python object, borrowed: torch's own inline
// `THPVariable_Unpack`, without the heap-allocated handle that tch's `pyobject_unpack` makes
// per tensor. Used where a call walks every parameter (`zero_grad`).
#include <torch/csrc/autograd/python_variable.h>

extern "C" {

// Returns a pointer to the tensor held by `obj`, valid while `obj` is alive and unchanged, or
// null if `obj` is not a torch.Tensor (or a subclass). The caller holds the GIL. Clears any
// Python error the instance check raised (the caller reports its own TypeError).
const at::Tensor* ferroptim_py_tensor(PyObject* obj) noexcept {
  if (obj == nullptr) {
    return nullptr;
  }
  if (!THPVariable_Check(obj)) {
    PyErr_Clear();
    return nullptr;
  }
  return &THPVariable_Unpack(obj);
}

}  // extern "C"
