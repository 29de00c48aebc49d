//! Instruction-set specific kernels, one folder per architecture. The CPU is
//! probed once (std caches `is_x86_feature_detected!`); every path here is
//! tested against `scalar`, the specification.

use crate::ggml::GgmlType;
use crate::search::{SearchFit, Sums};
use crate::{ErrorStats, Method, QuantFormat, RowsOut, Scheme, Src};

#[cfg(target_arch = "x86_64")]
mod x86_64;

/// Whether the AVX2 + FMA + F16C kernels can run here.
pub(crate) fn avx2_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The AVX2 kernels; the caller has checked [`avx2_available`].
pub(crate) fn avx2_quantize_rows(
    fmt: &QuantFormat,
    k: usize,
    src: Src<'_>,
    out: RowsOut<'_>,
) -> ErrorStats {
    #[cfg(target_arch = "x86_64")]
    {
        x86_64::avx2::quantize_rows(fmt, k, src, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (fmt, k, src, out);
        unreachable!("AVX2 is never available off x86_64")
    }
}

/// Whether the AVX-512 kernels can run here: AVX-512 F, BW and VL, with AVX2, FMA and F16C.
pub(crate) fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && avx2_available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The AVX-512 RTN kernels (no double quantization).
///
/// # Safety
/// The CPU must have what [`avx512_available`] checks. This function does not check it:
/// it also runs under a CPU emulator, where the standard library's feature cache (this
/// process's memory, mirrored) would give the host's answer. `crate::quantize_rows`
/// checks; `crate::quantize_rows_unchecked`'s caller guarantees it.
pub(crate) unsafe fn avx512_quantize_rows(
    fmt: &QuantFormat,
    k: usize,
    src: Src<'_>,
    out: RowsOut<'_>,
) -> ErrorStats {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the caller guarantees the CPU features.
        unsafe { x86_64::avx512::quantize_rows(fmt, k, src, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (fmt, k, src, out);
        unreachable!("AVX-512 is never available off x86_64")
    }
}

/// The AVX2 ggml block kernels; the caller has checked [`avx2_available`].
pub(crate) fn avx2_ggml_quantize_blocks(ty: GgmlType, src: Src<'_>, out: &mut [u8]) -> ErrorStats {
    #[cfg(target_arch = "x86_64")]
    {
        x86_64::ggml_avx2::quantize_blocks(ty, src, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ty, src, out);
        unreachable!("AVX2 is never available off x86_64")
    }
}

/// The AVX2 search kernels ([`crate::search::quantize_rows`]); the caller has checked [`avx2_available`].
pub(crate) fn avx2_search_rows(
    fmt: &QuantFormat,
    k: usize,
    src: Src<'_>,
    out: RowsOut<'_>,
) -> ErrorStats {
    #[cfg(target_arch = "x86_64")]
    {
        x86_64::search_avx2::search_rows(fmt, k, src, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (fmt, k, src, out);
        unreachable!("AVX2 is never available off x86_64")
    }
}

/// The AVX2 double-quantization kernels ([`crate::dq::quantize_rows`]); the caller has
/// checked [`avx2_available`].
pub(crate) fn avx2_dq_rows(
    method: Method,
    fmt: &QuantFormat,
    k: usize,
    src: Src<'_>,
    out: RowsOut<'_>,
) -> ErrorStats {
    #[cfg(target_arch = "x86_64")]
    {
        x86_64::search_avx2::dq_rows(method, fmt, k, src, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (method, fmt, k, src, out);
        unreachable!("AVX2 is never available off x86_64")
    }
}

/// The AVX2 [`crate::search::code_sums`]; the caller has checked [`avx2_available`].
pub(crate) fn avx2_code_sums(
    scheme: Scheme,
    x: &[f32],
    base: f32,
    invs: &[f32],
    whole: &Sums,
    out: &mut [Sums],
) {
    #[cfg(target_arch = "x86_64")]
    {
        x86_64::search_avx2::code_sums_entry(scheme, x, base, invs, whole, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (scheme, x, base, invs, whole, out);
        unreachable!("AVX2 is never available off x86_64")
    }
}

/// The AVX2 [`crate::search::Sums::of`]; the caller has checked [`avx2_available`].
pub(crate) fn avx2_sums_of(x: &[f32]) -> Sums {
    #[cfg(target_arch = "x86_64")]
    {
        x86_64::search_avx2::sums_of_entry(x)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = x;
        unreachable!("AVX2 is never available off x86_64")
    }
}

/// The AVX2 [`crate::search::fit_search`]; the caller has checked [`avx2_available`].
pub(crate) fn avx2_fit_search(scheme: Scheme, x: &[f32], nonpositive_min: bool) -> SearchFit {
    #[cfg(target_arch = "x86_64")]
    {
        x86_64::search_avx2::fit_search_entry(scheme, x, nonpositive_min)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (scheme, x, nonpositive_min);
        unreachable!("AVX2 is never available off x86_64")
    }
}

/// The AVX2 fits of consecutive groups; the caller has checked [`avx2_available`].
pub(crate) fn avx2_fit_search_groups(
    scheme: Scheme,
    x: &[f32],
    g: usize,
    nonpositive_min: bool,
    out: &mut [SearchFit],
) {
    #[cfg(target_arch = "x86_64")]
    {
        x86_64::search_avx2::fit_search_groups_entry(scheme, x, g, nonpositive_min, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (scheme, x, g, nonpositive_min, out);
        unreachable!("AVX2 is never available off x86_64")
    }
}
