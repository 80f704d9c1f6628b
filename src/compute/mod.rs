//! CPU compute kernels shared by the model's forward passes, the Hessians and
//! the evaluation: f32 GEMMs through faer, the bf16 GEMM for AVX512-BF16 CPUs,
//! and the fused softmax / negative log-likelihood passes ([`kernels`],
//! [`bf16_gemm`]). Below [`crate::model`] and [`crate::compress`]; depends on
//! nothing else in the crate.

pub mod bf16_gemm;
pub mod kernels;

/// A pointer shared by parallel tasks that write disjoint elements behind it
/// (tiles of one output, rows of one head): raw pointers are neither `Send`
/// nor `Sync`, and the tasks' disjointness is what makes sharing it sound.
pub(crate) struct SendPtr<T>(pub(crate) *mut T);

impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so that closures capture the whole wrapper).
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

// SAFETY: every user hands each task its own elements behind the pointer and
// reads nothing behind it until the tasks are done.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
