//! Tensors (initializers) whose bytes may be produced lazily, so that an
//! export streams weights from the memory-mapped checkpoints to disk one at a
//! time and never holds a second copy of the model.

use std::fmt;
use std::sync::Arc;

use crate::{Error, Result};

/// Element types used by the graphs (ONNX `TensorProto.DataType` codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl DType {
    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        use crate::onnx::proto::tensor_proto::DataType as T;
        (match self {
            DType::F32 => T::Float,
            DType::U8 => T::Uint8,
            DType::I8 => T::Int8,
            DType::I32 => T::Int32,
            DType::I64 => T::Int64,
            DType::Bool => T::Bool,
            DType::F16 => T::Float16,
            DType::BF16 => T::Bfloat16,
        }) as i32
    }

    /// The type of an ONNX `TensorProto.DataType` code, if supported.
    pub fn from_onnx_code(code: i64) -> Option<DType> {
        DType::ALL
            .into_iter()
            .find(|d| d.onnx_code() as i64 == code)
    }

    pub const ALL: [DType; 8] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I64,
        DType::I32,
        DType::I8,
        DType::U8,
        DType::Bool,
    ];

    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The name used in manifests (`float32`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Produces a tensor's bytes (little-endian) on demand.
pub type LoadFn = Arc<dyn Fn() -> Result<Vec<u8>, String> + Send + Sync>;

/// The bytes of a tensor: in memory, or produced when written.
#[derive(Clone)]
pub enum TensorData {
    Bytes(Arc<Vec<u8>>),
    Lazy(LoadFn),
}

/// A named-less tensor: dtype, shape and (possibly lazy) data.
#[derive(Clone)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tensor({}, {:?})", self.dtype, self.shape)
    }
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn byte_len(&self) -> usize {
        self.numel() * self.dtype.size()
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Tensor {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor {
            dtype: DType::F32,
            shape,
            data: TensorData::Bytes(Arc::new(bytes)),
        }
    }

    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Tensor {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor {
            dtype: DType::I64,
            shape,
            data: TensorData::Bytes(Arc::new(bytes)),
        }
    }

    /// The tensor's bytes, checked against its dtype and shape.
    pub fn bytes(&self) -> Result<Arc<Vec<u8>>, String> {
        let bytes = match &self.data {
            TensorData::Bytes(b) => b.clone(),
            TensorData::Lazy(f) => Arc::new(f()?),
        };
        if bytes.len() != self.byte_len() {
            return Err(format!(
                "produced {} bytes, {} expected for {} {:?}",
                bytes.len(),
                self.byte_len(),
                self.dtype,
                self.shape
            ));
        }
        Ok(bytes)
    }

    /// A lazy transform of this tensor's bytes into a new dtype/shape.
    pub fn map(
        self,
        dtype: DType,
        shape: Vec<usize>,
        f: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
    ) -> Tensor {
        let inner = self;
        Tensor {
            dtype,
            shape,
            data: TensorData::Lazy(Arc::new(move || Ok(f(&inner.bytes()?)))),
        }
    }

    /// `[rows, cols]` -> `[cols, rows]`, lazily (as `nn.Linear` weights are
    /// stored `[out, in]` and ONNX `MatMul` wants `[in, out]`).
    pub fn transpose_2d(self) -> Result<Tensor> {
        let [rows, cols] = self.shape[..] else {
            return Err(Error::Config(format!(
                "transpose_2d needs a 2-D tensor, got {:?}",
                self.shape
            )));
        };
        let es = self.dtype.size();
        let dtype = self.dtype;
        Ok(self.map(dtype, vec![cols, rows], move |b| {
            let mut out = vec![0u8; b.len()];
            for r in 0..rows {
                for c in 0..cols {
                    let src = (r * cols + c) * es;
                    let dst = (c * rows + r) * es;
                    out[dst..dst + es].copy_from_slice(&b[src..src + es]);
                }
            }
            out
        }))
    }

    /// The same data under another shape of equal element count.
    pub fn reshape(mut self, shape: Vec<usize>) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        if n != self.numel() {
            return Err(Error::Config(format!(
                "cannot reshape {:?} to {:?}",
                self.shape, shape
            )));
        }
        self.shape = shape;
        Ok(self)
    }

    /// Decodes an f32 tensor (small constants, tests).
    pub fn to_f32_vec(&self) -> Result<Vec<f32>, String> {
        if self.dtype != DType::F32 {
            return Err(format!("expected float32, got {}", self.dtype));
        }
        Ok(self
            .bytes()?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

/// Where a graph builder gets its weights from, by dotted checkpoint path.
pub trait WeightSource {
    /// The tensor named `name` as float32 (converted from f16/bf16 if needed).
    fn get(&self, name: &str) -> Result<Tensor>;
    /// Whether a tensor of that name exists.
    fn contains(&self, name: &str) -> bool;
    /// The tensor `name` where the graph expects `shape`: sources that make
    /// weights up (random-weight presets) use the shape; others ignore it.
    fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let _ = shape;
        self.get(name)
    }
}

/// A source with no weights (graphs made of inputs and constants only).
pub struct NoWeights;

impl WeightSource for NoWeights {
    fn get(&self, name: &str) -> Result<Tensor> {
        Err(Error::MissingTensor {
            name: name.to_string(),
            file: None,
        })
    }
    fn contains(&self, _: &str) -> bool {
        false
    }
}
