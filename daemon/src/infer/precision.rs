//! Inference precision: `f32`, `bf16` or `int8` (and the `auto` setting that picks among
//! them), and the CPU feature that decides what a precision computes on this machine.
//!
//! bf16 runs natively only with AMX-BF16 or AVX512-BF16; without them OpenVINO computes
//! in f32. INT8 runs on a quantized copy of the network (see [`super::int8`]); its integer
//! kernels differ with AMX-INT8, AVX512-VNNI, AVX-VNNI or plain AVX2. Results at a
//! precision other than f32 are therefore only comparable between machines with the same
//! feature, and gates and golden files are keyed by it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A precision the network runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit float arithmetic everywhere (the validated reference).
    F32,
    /// bfloat16 arithmetic where the CPU has it natively.
    Bf16,
    /// The post-training quantized (8-bit integer) network.
    Int8,
}

/// The `inference.precision` setting: one precision, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionSetting {
    /// Exactly this precision (other than f32 only once gated on this CPU).
    Fixed(Precision),
    /// The fastest precision whose gate passed on this CPU's feature.
    Auto,
}

/// Why a precision name is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("precision must be f32, bf16, int8 or auto, got {0:?}")]
pub struct BadPrecision(pub String);

impl Precision {
    /// Every precision, fastest candidates last (the order `auto` breaks ties in).
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::Int8];

    /// The name used in configuration, records and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        }
    }

    /// OpenVINO's `INFERENCE_PRECISION_HINT` for this precision. INT8 keeps f32 for the
    /// layers that stay in float, so that only the quantization changes results.
    pub fn openvino_hint(self) -> &'static str {
        match self {
            Precision::F32 | Precision::Int8 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// The CPU feature that decides this precision's results, from `/proc/cpuinfo` flags.
    pub fn cpu_feature(self, flags: &CpuFlags) -> &'static str {
        match self {
            Precision::F32 => "any",
            Precision::Bf16 if flags.has("amx_bf16") => "amx-bf16",
            Precision::Bf16 if flags.has("avx512_bf16") => "avx512-bf16",
            Precision::Int8 if flags.has("amx_int8") => "amx-int8",
            Precision::Int8 if flags.has("avx512_vnni") => "avx512-vnni",
            Precision::Int8 if flags.has("avx_vnni") => "avx-vnni",
            Precision::Bf16 | Precision::Int8 => "none",
        }
    }

    /// Whether this precision computes anything other than f32 on a CPU with `flags`
    /// (bf16 without native support falls back to f32 and gains nothing).
    pub fn differs_from_f32(self, flags: &CpuFlags) -> bool {
        match self {
            Precision::F32 => false,
            Precision::Bf16 => self.cpu_feature(flags) != "none",
            Precision::Int8 => true,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = BadPrecision;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" | "i8" => Ok(Precision::Int8),
            _ => Err(BadPrecision(s.to_string())),
        }
    }
}

impl FromStr for PrecisionSetting {
    type Err = BadPrecision;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("auto") {
            Ok(PrecisionSetting::Auto)
        } else {
            s.parse().map(PrecisionSetting::Fixed)
        }
    }
}

impl fmt::Display for PrecisionSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrecisionSetting::Fixed(p) => p.fmt(f),
            PrecisionSetting::Auto => f.write_str("auto"),
        }
    }
}

/// The CPU's feature flags (the first `flags` line of `/proc/cpuinfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuFlags(Vec<String>);

impl CpuFlags {
    /// The flags of this machine's first CPU (none when `/proc/cpuinfo` is unreadable).
    pub fn detect() -> CpuFlags {
        std::fs::read_to_string("/proc/cpuinfo")
            .map(|t| CpuFlags::parse(&t))
            .unwrap_or_default()
    }

    /// Flags from the text of a `/proc/cpuinfo`.
    pub fn parse(cpuinfo: &str) -> CpuFlags {
        let line = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v)
            .unwrap_or("");
        CpuFlags(line.split_whitespace().map(str::to_string).collect())
    }

    /// Whether the CPU has `flag`.
    pub fn has(&self, flag: &str) -> bool {
        self.0.iter().any(|f| f == flag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for p in Precision::ALL {
            assert_eq!(p.as_str().parse::<Precision>(), Ok(p));
            assert_eq!(p.to_string(), p.as_str());
        }
        assert_eq!("AUTO".parse(), Ok(PrecisionSetting::Auto));
        assert_eq!("bf16".parse(), Ok(PrecisionSetting::Fixed(Precision::Bf16)));
        assert!("fp16".parse::<PrecisionSetting>().is_err());
    }

    #[test]
    fn the_feature_is_read_from_cpuinfo_flags() {
        let amx = CpuFlags::parse(
            "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_int8 avx512_vnni\n",
        );
        assert_eq!(Precision::Bf16.cpu_feature(&amx), "amx-bf16");
        assert_eq!(Precision::Int8.cpu_feature(&amx), "amx-int8");
        let avx512 = CpuFlags::parse("flags : avx512f avx512_bf16 avx512_vnni\n");
        assert_eq!(Precision::Bf16.cpu_feature(&avx512), "avx512-bf16");
        assert_eq!(Precision::Int8.cpu_feature(&avx512), "avx512-vnni");
        let nuc = CpuFlags::parse("flags : avx2 avx_vnni\n");
        assert_eq!(Precision::Bf16.cpu_feature(&nuc), "none");
        assert_eq!(Precision::Int8.cpu_feature(&nuc), "avx-vnni");
        assert!(!Precision::Bf16.differs_from_f32(&nuc));
        assert!(Precision::Int8.differs_from_f32(&nuc));
        assert_eq!(Precision::F32.cpu_feature(&CpuFlags::default()), "any");
        assert_eq!(CpuFlags::parse("no flags here"), CpuFlags::default());
    }
}
