//! Number formats, on the ground floor of the crate: a tensor's element type (`DType`) and the
//! precision convolutions, matmuls and attention compute in (`Precision`). Nothing here imports
//! the rest of the crate, so tensors, backends and the config can all name them.

/// Element type of a tensor. Backends state which they implement; the CPU backend
/// implements F64 as well so gradient checks can run in double precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    BF16,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::BF16 => 2,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
        };
        f.write_str(s)
    }
}

/// What convolutions, matmuls and attention compute in (`precision` in the config).
/// `Bf16`: their operands and results are rounded to bfloat16 (FP32 accumulation), and so are
/// the gradients through them, as under PyTorch's bf16 autocast; weights, optimiser state,
/// batch-norm statistics, losses and softmax stay FP32.
/// Read from the recipe and from `--precision` by its serde names, "fp32" and "bf16".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    /// "fp32" or "bf16"; anything else is an error naming `precision` and both values.
    pub fn parse(s: &str) -> crate::error::Result<Self> {
        crate::error::parse_setting("precision", s)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

/// `--precision bf16`.
impl std::str::FromStr for Precision {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<Self> {
        Self::parse(s)
    }
}
