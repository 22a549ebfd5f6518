"""float32 math and explicit 16-lane vector intrinsics for the numba kernels.

The Mamba-1 scan (:mod:`ssm_profile.kernels.fastscan`) runs its forward recurrence on explicit
``<16 x float>`` LLVM vectors (:data:`f32x16` with :func:`vload`, :func:`vstore`, :func:`vsplat`,
:func:`vmul`, :func:`vfma`, :func:`vexp`, :func:`prefetch`) and its scalar loops on vectorisable
float32 ``exp``/``log``/``softplus``/``sigmoid`` (Cephes polynomials, never widened to float64).
Import only where numba is installed (``fastscan.BACKEND == "numba"``).
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.core import types as nbtypes
from numba.extending import intrinsic, models, register_model

LANES = 16  # float32 lanes per vector: one AVX-512 register (two AVX2 ones)

_f32 = np.float32
# Cephes expf / logf constants, all float32 so numba never widens the loops to float64.
_LOG2E, _LN2_HI, _LN2_LO = _f32(1.4426950408889634), _f32(0.693359375), _f32(-2.12194440e-4)
_EXP_P = tuple(_f32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))
_LOG_P = tuple(_f32(c) for c in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1,
                                 -1.2420140846e-1, 1.4249322787e-1, -1.6668057665e-1,
                                 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1))
_EXP_HI, _EXP_LO = _f32(88.37626), _f32(-87.33654)
_SQRT_HALF, SOFTPLUS_THRESHOLD = _f32(0.70710677), _f32(20.0)
ZERO, _HALF, ONE, _TINY = _f32(0.0), _f32(0.5), _f32(1.0), _f32(1e-30)
# Polynomial helpers must not be reassociated (that would undo the two-step ln2 reduction);
# they are separate functions so LLVM inlines them with their own flags.
_SAFE_MATH = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}
# numpy error model: no zero-division checks, whose raise paths would block vectorisation.
jit = functools.partial(numba.njit, cache=True, error_model="numpy")


@intrinsic
def _bits_to_f32(typingctx, bits):
    if not (isinstance(bits, nbtypes.Integer) and bits.bitwidth == 32):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return nbtypes.float32(bits), codegen


@intrinsic
def _f32_to_bits(typingctx, value):
    if value != nbtypes.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return nbtypes.int32(value), codegen


# ---- explicit 16 x float32 vectors. The forward recurrence is written with these rather
# than left to LLVM's loop vectoriser: a 16-trip inner loop over numba arrays gets runtime
# alias checks and a memory round trip for every accumulator, about 3x slower.

_VEC = ir.VectorType(ir.FloatType(), LANES)
_IVEC = ir.VectorType(ir.IntType(32), LANES)


class _F32x16(nbtypes.Type):
    def __init__(self):
        super().__init__(name="f32x16")


f32x16 = _F32x16()


@register_model(_F32x16)
class _F32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def _vconst(value: float):
    return ir.Constant(_VEC, [float(np.float32(value))] * LANES)


def _vcall(builder, name: str, *args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VEC, [_VEC] * len(args)),
                                        f"{name}.v{LANES}f32")
    return builder.call(fn, list(args))


def _vptr(context, builder, sig, args):
    """Address of ``array[index]`` as a vector pointer (args are the array and the index)."""
    array = context.make_array(sig.args[0])(context, builder, args[0])
    index = context.cast(builder, args[1], sig.args[1], nbtypes.intp)
    return builder.bitcast(builder.gep(array.data, [index]), _VEC.as_pointer())


def _is_f32_row(ty) -> bool:
    """A contiguous 1-D float32 array (the intrinsics address it as pointer + index)."""
    return (isinstance(ty, nbtypes.Array) and ty.dtype == nbtypes.float32 and ty.ndim == 1
            and ty.layout == "C")


@intrinsic
def vload(typingctx, array, index):
    """array[index:index + 16] as a vector (caller guarantees the bounds)."""
    if not (_is_f32_row(array) and isinstance(index, nbtypes.Integer)):
        return None

    def codegen(context, builder, sig, args):
        return builder.load(_vptr(context, builder, sig, args), align=4, typ=_VEC)

    return f32x16(array, index), codegen


@intrinsic
def vstore(typingctx, array, index, value):
    if not (_is_f32_row(array) and isinstance(index, nbtypes.Integer) and value == f32x16):
        return None

    def codegen(context, builder, sig, args):
        builder.store(args[2], _vptr(context, builder, sig, args), align=4)
        return context.get_dummy_value()

    return nbtypes.none(array, index, value), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Hint that array[index] is read soon (the tiles' strided streams defeat the hardware
    prefetcher)."""
    if not (_is_f32_row(array) and isinstance(index, nbtypes.Integer)):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.gep(data, [context.cast(builder, args[1], sig.args[1], nbtypes.intp)])
        i32 = ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", [ptr.type], ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]))
        # read, low temporal locality (kept out of L1, which the tiles need), data cache
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 1), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return nbtypes.none(array, index), codegen


@intrinsic
def vsplat(typingctx, value):
    if value != nbtypes.float32:
        return None

    def codegen(context, builder, sig, args):
        one = builder.insert_element(ir.Constant(_VEC, ir.Undefined), args[0],
                                     ir.Constant(ir.IntType(32), 0))
        return builder.shuffle_vector(one, ir.Constant(_VEC, ir.Undefined),
                                      ir.Constant(_IVEC, [0] * LANES))

    return f32x16(value), codegen


@intrinsic
def vmul(typingctx, a, b):
    if not (a == f32x16 and b == f32x16):
        return None

    def codegen(context, builder, sig, args):
        return builder.fmul(*args)

    return f32x16(a, b), codegen


@intrinsic
def vfma(typingctx, a, b, c):
    """a * b + c, fused."""
    if not (a == f32x16 and b == f32x16 and c == f32x16):
        return None

    def codegen(context, builder, sig, args):
        return _vcall(builder, "llvm.fma", *args)

    return f32x16(a, b, c), codegen


@intrinsic
def vexp(typingctx, x):
    """Vector form of :func:`exp` (same reduction and polynomial)."""
    if x != f32x16:
        return None

    def codegen(context, builder, sig, args):
        x = args[0]
        x = builder.select(builder.fcmp_ordered("<", x, _vconst(_EXP_HI)), x, _vconst(_EXP_HI))
        x = builder.select(builder.fcmp_ordered(">", x, _vconst(_EXP_LO)), x, _vconst(_EXP_LO))
        k = _vcall(builder, "llvm.floor", _vcall(builder, "llvm.fma", x, _vconst(_LOG2E), _vconst(_HALF)))
        f = _vcall(builder, "llvm.fma", k, _vconst(-_LN2_HI), x)
        f = _vcall(builder, "llvm.fma", k, _vconst(-_LN2_LO), f)
        p = _vconst(_EXP_P[0])
        for c in _EXP_P[1:]:
            p = _vcall(builder, "llvm.fma", p, f, _vconst(c))
        p = _vcall(builder, "llvm.fma", builder.fmul(p, f), f, builder.fadd(f, _vconst(1.0)))
        bits = builder.shl(builder.add(builder.fptosi(k, _IVEC), ir.Constant(_IVEC, [127] * LANES)),
                           ir.Constant(_IVEC, [23] * LANES))
        return builder.fmul(p, builder.bitcast(bits, _VEC))

    return f32x16(x), codegen


@jit(fastmath=_SAFE_MATH)
def exp_f32(x):
    """float32 exp, ~1 ulp on [-87.3, 88.4] (clamped outside), vectorisable."""
    x = min(max(x, _EXP_LO), _EXP_HI)
    k = np.floor(x * _LOG2E + _HALF)
    f = x - k * _LN2_HI
    f = f - k * _LN2_LO
    p = _EXP_P[0]
    for c in _EXP_P[1:]:
        p = p * f + c
    p = p * f * f + f + ONE
    return p * _bits_to_f32(np.int32((np.int32(k) + np.int32(127)) << np.int32(23)))


@jit(fastmath=_SAFE_MATH)
def log_f32(x):
    """float32 natural log for normal x > 0, vectorisable."""
    bits = _f32_to_bits(x)
    e = _f32((bits >> np.int32(23)) - np.int32(126))
    m = _bits_to_f32(np.int32((bits & np.int32(0x007FFFFF)) | np.int32(0x3F000000)))  # in [0.5, 1)
    small = m < _SQRT_HALF
    e = e - ONE if small else e
    m = (m + m - ONE) if small else (m - ONE)
    z = m * m
    p = _LOG_P[0]
    for c in _LOG_P[1:]:
        p = p * m + c
    y = p * m * z + _LN2_LO * e - _HALF * z
    return m + y + _LN2_HI * e


@jit(fastmath=_SAFE_MATH)
def softplus_f32(x):
    """torch.nn.functional.softplus (beta 1, threshold 20)."""
    y = exp_f32(min(x, SOFTPLUS_THRESHOLD))
    w = ONE + y
    d = w - ONE
    # log1p(y) = log(w) * y / (w - 1) stays accurate when 1 + y rounds (Goldberg). Both sides
    # are computed unconditionally so the choice is a select and the loop vectorises.
    q = log_f32(w) * (y / max(d, _TINY))
    lp = q if d > ZERO else y
    return x if x > SOFTPLUS_THRESHOLD else lp


@jit(fastmath=_SAFE_MATH)
def sigmoid_f32(x):
    return ONE / (ONE + exp_f32(-x))
