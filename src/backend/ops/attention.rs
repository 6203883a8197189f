//! Scaled dot-product attention (flash-style: the score matrix is never stored).

use super::CoreOps;
use crate::error::Result;

/// Scaled dot-product attention over `bh` independent (batch x head) slices:
/// q [bh, tq, d], k and v [bh, tk, d], o [bh, tq, d], lse (log-sum-exp of each score row) [bh, tq].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnDims {
    pub bh: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub scale: f32,
}

pub trait AttentionOps: CoreOps {
    #[allow(clippy::too_many_arguments)]
    fn attention_fwd(
        &self, q: &Self::Storage, k: &Self::Storage, v: &Self::Storage, o: &Self::Storage, lse: &Self::Storage, d: &AttnDims,
    ) -> Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &self, q: &Self::Storage, k: &Self::Storage, v: &Self::Storage, o: &Self::Storage, lse: &Self::Storage, dout: &Self::Storage,
        dq: &Self::Storage, dk: &Self::Storage, dv: &Self::Storage, d: &AttnDims,
    ) -> Result<()>;
}
