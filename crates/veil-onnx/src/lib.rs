//! The one reader of ONNX protobufs: what both the model checks (`veil-ml`) and the FHE
//! compiler (`veil-fhe`) see of an uploaded file, decoded the same way.
//!
//! Uploaded models are untrusted: [`decode`] runs tract's protobuf decoder under
//! `catch_unwind` (it has panicking paths on malformed files); the accessors below never
//! panic and never allocate more than the file already holds. What the graph *means* is each
//! caller's business; this crate only reads fields.

pub use tract_onnx::pb;
use tract_onnx::pb::{AttributeProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};
use tract_onnx::prelude::Framework;

/// ONNX element types (`TensorProto.DataType`) the readers interpret.
pub mod dtype {
    pub const FLOAT: i32 = 1;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const STRING: i32 = 8;
    pub const DOUBLE: i32 = 11;

    /// `float`, `double`, `int64`, `int32`, `string` or `other`.
    pub fn name(t: i32) -> &'static str {
        match t {
            FLOAT => "float",
            DOUBLE => "double",
            INT64 => "int64",
            INT32 => "int32",
            STRING => "string",
            _ => "other",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnnxError {
    /// Not a readable protobuf, or fields that contradict each other.
    #[error("{0}")]
    Corrupt(String),
    /// Readable, but of a kind the caller asked not to interpret (a non-numeric constant).
    #[error("{0}")]
    Unsupported(String),
}

/// Decodes the protobuf, turning a panic inside the decoder into [`OnnxError::Corrupt`].
pub fn decode(bytes: &[u8]) -> Result<ModelProto, OnnxError> {
    std::panic::catch_unwind(|| tract_onnx::onnx().proto_model_for_read(&mut &bytes[..]))
        .map_err(|_| OnnxError::Corrupt("the ONNX decoder failed on a malformed model".into()))?
        .map_err(|e| OnnxError::Corrupt(e.to_string()))
}

/// The operator domain with the default one named: `""` is `ai.onnx`.
pub fn domain(d: &str) -> &str {
    if d.is_empty() { "ai.onnx" } else { d }
}

/// Named attribute access on a node. Missing attributes read as empty or as the default given.
pub trait Attributes {
    fn attr(&self, name: &str) -> Option<&AttributeProto>;

    fn floats(&self, name: &str) -> Vec<f64> {
        self.attr(name)
            .map(|a| a.floats.iter().map(|&f| f64::from(f)).collect())
            .unwrap_or_default()
    }
    fn ints(&self, name: &str) -> Vec<i64> {
        self.attr(name).map(|a| a.ints.clone()).unwrap_or_default()
    }
    fn int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }
    fn float(&self, name: &str, default: f64) -> f64 {
        self.attr(name).map_or(default, |a| f64::from(a.f))
    }
    fn string(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    fn strings(&self, name: &str) -> Vec<String> {
        self.attr(name)
            .map(|a| a.strings.iter().map(|s| lossy(s)).collect())
            .unwrap_or_default()
    }
    /// The tensor held by a tensor-valued attribute (`Constant`'s `value`, …).
    fn tensor(&self, name: &str) -> Option<&TensorProto> {
        self.attr(name).and_then(|a| a.t.as_ref())
    }
}

impl Attributes for NodeProto {
    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name == name)
    }
}

fn lossy(s: &[u8]) -> String {
    String::from_utf8_lossy(s).into_owned()
}

/// A classifier's class labels, as its ONNX-ML node declares them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassLabels {
    Ints(Vec<i64>),
    Strings(Vec<String>),
}

impl ClassLabels {
    /// The labels as the names a prediction reports.
    pub fn names(&self) -> Vec<String> {
        match self {
            ClassLabels::Ints(v) => v.iter().map(i64::to_string).collect(),
            ClassLabels::Strings(v) => v.clone(),
        }
    }
}

/// `classlabels_ints` (or its older name `classlabels_int64s`), else `classlabels_strings`;
/// `None` if the node lists none.
pub fn class_labels(n: &NodeProto) -> Option<ClassLabels> {
    let ints = Some(n.ints("classlabels_ints"))
        .filter(|v| !v.is_empty())
        .or_else(|| Some(n.ints("classlabels_int64s")).filter(|v| !v.is_empty()));
    match ints {
        Some(v) => Some(ClassLabels::Ints(v)),
        None => Some(n.strings("classlabels_strings"))
            .filter(|v| !v.is_empty())
            .map(ClassLabels::Strings),
    }
}

/// A numeric constant tensor: its dimensions and its values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Constant {
    pub dims: Vec<usize>,
    pub data: Vec<f64>,
}

/// Reads a numeric tensor (float, double, int32, int64; raw or typed fields). Other element
/// types are [`OnnxError::Unsupported`]; a value count that does not match the dimensions is
/// [`OnnxError::Corrupt`].
pub fn constant(t: &TensorProto) -> Result<Constant, OnnxError> {
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
        .collect();
    let n: usize = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| OnnxError::Unsupported("tensor too large".into()))?;
    let raw = &t.raw_data;
    let data: Vec<f64> = match t.data_type {
        dtype::FLOAT if !raw.is_empty() => {
            le_values(raw, |b: [u8; 4]| f32::from_le_bytes(b).into())
        }
        dtype::FLOAT => t.float_data.iter().map(|&f| f64::from(f)).collect(),
        dtype::DOUBLE if !raw.is_empty() => le_values(raw, f64::from_le_bytes),
        dtype::DOUBLE => t.double_data.clone(),
        dtype::INT64 if !raw.is_empty() => le_values(raw, |b| i64::from_le_bytes(b) as f64),
        dtype::INT64 => t.int64_data.iter().map(|&v| v as f64).collect(),
        dtype::INT32 if !raw.is_empty() => le_values(raw, |b| f64::from(i32::from_le_bytes(b))),
        dtype::INT32 => t.int32_data.iter().map(|&v| f64::from(v)).collect(),
        other => {
            return Err(OnnxError::Unsupported(format!(
                "constant '{}' has element type {other}, not a number",
                t.name
            )));
        }
    };
    if data.len() != n {
        return Err(OnnxError::Corrupt(format!(
            "constant '{}' holds {} values for shape {:?}",
            t.name,
            data.len(),
            dims
        )));
    }
    Ok(Constant { dims, data })
}

/// Little-endian values of `N` bytes each; a trailing partial value is dropped (and then
/// caught by the count check).
fn le_values<const N: usize>(raw: &[u8], read: impl Fn([u8; N]) -> f64) -> Vec<f64> {
    raw.chunks_exact(N)
        .filter_map(|c| <[u8; N]>::try_from(c).ok())
        .map(read)
        .collect()
}

/// A string tensor's values; `None` if the tensor is not of strings.
pub fn strings(t: &TensorProto) -> Option<Vec<String>> {
    (t.data_type == dtype::STRING).then(|| t.string_data.iter().map(|s| lossy(s)).collect())
}

/// A graph input's or output's declared element type and dimensions (`None` for a symbolic or
/// unset one, such as the batch); `None` if it is not declared as a tensor.
pub fn tensor_type(v: &ValueInfoProto) -> Option<(i32, Vec<Option<i64>>)> {
    let Some(pb::type_proto::Value::TensorType(tt)) = v.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let dims = tt
        .shape
        .as_ref()
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if *v > 0 => {
                        Some(*v)
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some((tt.elem_type, dims))
}

/// The graph's inputs that are not initializers: what a caller feeds.
pub fn fed_inputs(graph: &pb::GraphProto) -> Vec<&ValueInfoProto> {
    graph
        .input
        .iter()
        .filter(|i| !graph.initializer.iter().any(|t| t.name == i.name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(data_type: i32, dims: Vec<i64>, raw: Vec<u8>) -> TensorProto {
        TensorProto {
            name: "t".into(),
            data_type,
            dims,
            raw_data: raw,
            ..Default::default()
        }
    }

    #[test]
    fn raw_and_typed_constants_read_the_same_values() {
        let raw: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let typed = TensorProto {
            float_data: vec![1.5, -2.0],
            ..tensor(dtype::FLOAT, vec![2], vec![])
        };
        let expected = Constant {
            dims: vec![2],
            data: vec![1.5, -2.0],
        };
        assert_eq!(
            constant(&tensor(dtype::FLOAT, vec![2], raw)),
            Ok(expected.clone())
        );
        assert_eq!(constant(&typed), Ok(expected));
        let ints: Vec<u8> = [7i64, -3].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            constant(&tensor(dtype::INT64, vec![1, 2], ints)).map(|c| c.data),
            Ok(vec![7.0, -3.0])
        );
    }

    #[test]
    fn a_constant_whose_values_do_not_fill_its_shape_is_corrupt() {
        let raw: Vec<u8> = [1.0f32].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(matches!(
            constant(&tensor(dtype::FLOAT, vec![2], raw)),
            Err(OnnxError::Corrupt(_))
        ));
        // A shape whose element count overflows is refused before anything is allocated.
        assert!(matches!(
            constant(&tensor(dtype::FLOAT, vec![i64::MAX, i64::MAX], vec![])),
            Err(OnnxError::Unsupported(_))
        ));
        assert!(matches!(
            constant(&tensor(dtype::STRING, vec![1], vec![])),
            Err(OnnxError::Unsupported(_))
        ));
    }

    #[test]
    fn class_labels_prefer_integers_then_strings() {
        let attr = |name: &str, ints: Vec<i64>, strings: Vec<&str>| AttributeProto {
            name: name.into(),
            ints,
            strings: strings.into_iter().map(|s| s.as_bytes().to_vec()).collect(),
            ..Default::default()
        };
        let node = |attribute| NodeProto {
            attribute,
            ..Default::default()
        };
        assert_eq!(class_labels(&node(vec![])), None);
        assert_eq!(
            class_labels(&node(vec![attr("classlabels_int64s", vec![0, 1], vec![])]))
                .map(|c| c.names()),
            Some(vec!["0".to_string(), "1".to_string()])
        );
        assert_eq!(
            class_labels(&node(vec![attr(
                "classlabels_strings",
                vec![],
                vec!["no", "yes"]
            )])),
            Some(ClassLabels::Strings(vec!["no".into(), "yes".into()]))
        );
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        assert!(matches!(decode(&[0xff; 64]), Err(OnnxError::Corrupt(_))));
    }
}
