//! Instruction-set specific kernels, one folder per architecture. The CPU is
//! probed once (std caches `is_x86_feature_detected!`); every path here is
//! tested against `scalar`, the specification.

use crate::ggml::GgmlType;
use crate::{ErrorStats, QuantFormat, RowsOut, Src};

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
