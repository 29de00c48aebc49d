//! The packed output format, versions 1 and 2: tensor names, the `shrinkray`
//! metadata entry, and the byte layout of a safetensors file whose header is
//! written before any payload. Version 2 adds double-quantized scales
//! (`scale_bits`, `super_group`); a file is written as version 1 unless a
//! tensor uses them, and both versions are read.
//!
//! The user-facing description is the README section "The packed format".

use std::collections::BTreeMap;

use indexmap::IndexMap;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use shrinkray_kernels::{DoubleQuant, QuantFormat, ScaleDtype, Scheme};

use crate::checkpoint::dtype_align;

/// The newest version written in the `shrinkray` metadata entry (and the newest read).
pub const FORMAT_VERSION: u32 = 2;
/// The version of files without double-quantized scales (still written for them, and read).
pub const FORMAT_VERSION_PLAIN: u32 = 1;
/// The `__metadata__` key that marks a packed file.
pub const METADATA_KEY: &str = "shrinkray";

/// Name of the codes tensor of quantized tensor `name`.
pub fn qweight_name(name: &str) -> String {
    format!("{name}.qweight")
}
/// Name of the scales tensor of quantized tensor `name`.
pub fn scales_name(name: &str) -> String {
    format!("{name}.scales")
}
/// Name of the mins tensor of quantized tensor `name`.
pub fn mins_name(name: &str) -> String {
    format!("{name}.mins")
}
/// Name of the super-group scale factors of quantized tensor `name` (version 2).
pub fn super_scales_name(name: &str) -> String {
    format!("{name}.super_scales")
}
/// Name of the super-group min factors of quantized tensor `name` (version 2).
pub fn super_mins_name(name: &str) -> String {
    format!("{name}.super_mins")
}

/// A short label of a packed format: `int4-asym g64 F16`, or with double
/// quantization `int4-asym g32 dq6/8 F16` (6-bit scale codes, 8 groups per super-group).
pub fn describe(fmt: &QuantFormat) -> String {
    match fmt.dq {
        None => format!("{} g{} {}", fmt.scheme, fmt.group, fmt.scale_dtype),
        Some(d) => format!(
            "{} g{} dq{}/{} {}",
            fmt.scheme, fmt.group, d.bits, d.groups, fmt.scale_dtype
        ),
    }
}

/// How one quantized tensor was stored, as recorded in the metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedTensor {
    /// Scheme name (`int8`, `int8-asym`, `int4`, `int4-asym`).
    pub scheme: String,
    /// Bits per code.
    pub bits: u32,
    /// Whether there are no mins.
    pub symmetric: bool,
    /// Elements per group along the last dimension.
    pub group_size: usize,
    /// The original tensor's dtype.
    pub dtype: String,
    /// The original tensor's shape.
    pub shape: Vec<usize>,
    /// The dtype of scales and mins (version 2 with `scale_bits`: of the super-group factors).
    pub scale_dtype: String,
    /// Version 2: bits of each scale code and min code (double quantization).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_bits: Option<u32>,
    /// Version 2: groups per super-group (with `scale_bits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub super_group: Option<usize>,
}

impl PackedTensor {
    /// Describes a tensor of `dtype` and `shape` quantized with `fmt`.
    pub fn new(fmt: &QuantFormat, dtype: Dtype, shape: &[usize]) -> PackedTensor {
        PackedTensor {
            scheme: fmt.scheme.name().into(),
            bits: fmt.scheme.bits(),
            symmetric: fmt.scheme.symmetric(),
            group_size: fmt.group,
            dtype: dtype.to_string(),
            shape: shape.to_vec(),
            scale_dtype: fmt.scale_dtype.name().into(),
            scale_bits: fmt.dq.map(|d| d.bits),
            super_group: fmt.dq.map(|d| d.groups),
        }
    }

    /// The quantization format, if every field is one this version knows.
    pub fn quant_format(&self) -> Option<QuantFormat> {
        let scheme = Scheme::from_name(&self.scheme)?;
        let scale_dtype = match self.scale_dtype.as_str() {
            "F16" => ScaleDtype::F16,
            "BF16" => ScaleDtype::BF16,
            "F32" => ScaleDtype::F32,
            _ => return None,
        };
        let consistent = scheme.bits() == self.bits && scheme.symmetric() == self.symmetric;
        let dq = match (self.scale_bits, self.super_group) {
            (None, None) => None,
            (Some(bits), Some(groups)) if DoubleQuant::BITS.contains(&bits) && groups > 0 => {
                Some(DoubleQuant { bits, groups })
            }
            _ => return None,
        };
        (consistent && self.group_size > 0).then_some(QuantFormat {
            dq,
            scheme,
            group: self.group_size,
            scale_dtype,
        })
    }

    /// The original dtype, if it is one safetensors knows.
    pub fn original_dtype(&self) -> Option<Dtype> {
        parse_dtype(&self.dtype)
    }
}

/// The value of the `shrinkray` metadata entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedMeta {
    /// Format version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// Quantized tensors of this file, by original name, in file order.
    pub tensors: IndexMap<String, PackedTensor>,
}

impl PackedMeta {
    /// Parses the entry from a file's `__metadata__`, if present.
    pub fn from_metadata(md: &BTreeMap<String, String>) -> Option<Result<PackedMeta, String>> {
        let raw = md.get(METADATA_KEY)?;
        Some(
            serde_json::from_str::<PackedMeta>(raw)
                .map_err(|e| format!("`{METADATA_KEY}` metadata is not valid: {e}"))
                .and_then(|m| {
                    let v2 = m.tensors.values().find(|t| t.scale_bits.is_some() || t.super_group.is_some());
                    match (m.format, v2) {
                        (FORMAT_VERSION_PLAIN, Some(t)) => Err(format!(
                            "packed format version 1 has no double-quantized scales, but `{}` has `scale_bits`/`super_group`",
                            m.tensors.iter().find(|(_, x)| *x == t).map_or("", |(n, _)| n.as_str())
                        )),
                        (FORMAT_VERSION_PLAIN | FORMAT_VERSION, _) => Ok(m),
                        _ => Err(format!(
                            "packed format version {} is not supported (this shrinkray reads versions {FORMAT_VERSION_PLAIN} and {FORMAT_VERSION})",
                            m.format
                        )),
                    }
                }),
        )
    }

    /// The version a file with these tensors is written as: 2 with double quantization, else 1.
    pub fn version_for(tensors: &IndexMap<String, PackedTensor>) -> u32 {
        if tensors.values().any(|t| t.scale_bits.is_some()) {
            FORMAT_VERSION
        } else {
            FORMAT_VERSION_PLAIN
        }
    }

    /// The JSON string stored under [`METADATA_KEY`].
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("metadata serializes")
    }
}

/// Parses a safetensors dtype name (`F16`, `BF16`, `I64`, …).
pub fn parse_dtype(name: &str) -> Option<Dtype> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// One tensor of an output file, before offsets are assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutTensor {
    /// Its name.
    pub name: String,
    /// Its dtype.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its size in bytes.
    pub nbytes: u64,
}

/// The complete byte layout of one output file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileLayout {
    /// Everything before the data: length prefix, JSON header, space padding.
    pub header: Vec<u8>,
    /// Absolute file offset of each tensor, in the order they were given.
    pub offsets: Vec<u64>,
    /// Total file size in bytes.
    pub total: u64,
}

/// Lays out a safetensors file: tensors sorted by decreasing alignment (stable),
/// so that every tensor starts at a multiple of its element size.
///
/// Fails on a duplicate tensor name.
pub fn layout(
    tensors: &[OutTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<FileLayout, String> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(dtype_align(tensors[i].dtype)));

    let mut json = serde_json::Map::new();
    if !metadata.is_empty() {
        let md: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        json.insert("__metadata__".into(), md.into());
    }
    let mut rel = vec![0u64; tensors.len()];
    let mut at = 0u64;
    for &i in &order {
        let t = &tensors[i];
        if t.name == "__metadata__" || json.contains_key(&t.name) {
            return Err(format!("two output tensors would be named `{}`", t.name));
        }
        rel[i] = at;
        json.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": t.dtype.to_string(),
                "shape": t.shape,
                "data_offsets": [at, at + t.nbytes],
            }),
        );
        at += t.nbytes;
    }
    let mut text = serde_json::to_vec(&serde_json::Value::Object(json)).expect("header serializes");
    while !(8 + text.len()).is_multiple_of(8) {
        text.push(b' ');
    }
    let mut header = Vec::with_capacity(8 + text.len());
    header.extend_from_slice(&(text.len() as u64).to_le_bytes());
    header.extend_from_slice(&text);
    let base = header.len() as u64;
    Ok(FileLayout {
        offsets: rel.iter().map(|r| base + r).collect(),
        total: base + at,
        header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_and_readable_by_the_safetensors_crate() {
        let t = |name: &str, dtype, n: usize| OutTensor {
            name: name.into(),
            dtype,
            shape: vec![n],
            nbytes: (n * dtype_align(dtype)) as u64,
        };
        let tensors = vec![
            t("a", Dtype::U8, 3),
            t("b", Dtype::F16, 5),
            t("c", Dtype::F32, 1),
        ];
        let md = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let l = layout(&tensors, &md).unwrap();
        assert_eq!(l.header.len() % 8, 0);
        assert_eq!(l.offsets[2], l.header.len() as u64); // F32 first
        assert_eq!(l.offsets[1], l.offsets[2] + 4); // then F16
        assert_eq!(l.offsets[0], l.offsets[1] + 10); // then U8
        assert_eq!(l.total, l.offsets[0] + 3);
        let mut file = l.header.clone();
        file.resize(l.total as usize, 7);
        let st = safetensors::SafeTensors::deserialize(&file).unwrap();
        assert_eq!(st.tensor("b").unwrap().shape(), &[5]);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&file).unwrap();
        assert_eq!(meta.metadata().as_ref().unwrap()["k"], "v");
    }

    #[test]
    fn duplicate_names_are_refused() {
        let t = OutTensor {
            name: "x".into(),
            dtype: Dtype::U8,
            shape: vec![1],
            nbytes: 1,
        };
        assert!(layout(&[t.clone(), t], &BTreeMap::new()).is_err());
    }
}
