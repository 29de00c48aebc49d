//! x86_64 kernels.

pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod ggml_avx2;
pub(crate) mod search_avx2;
