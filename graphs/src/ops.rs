//! Thin typed wrappers over standard ONNX (opset 17) operators.

use crate::ir::{Attr, Scope, Value};

impl Scope<'_> {
    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.node("Add", &[a, b], vec![])
    }
    pub fn sub(&mut self, a: Value, b: Value) -> Value {
        self.node("Sub", &[a, b], vec![])
    }
    pub fn mul(&mut self, a: Value, b: Value) -> Value {
        self.node("Mul", &[a, b], vec![])
    }
    pub fn div(&mut self, a: Value, b: Value) -> Value {
        self.node("Div", &[a, b], vec![])
    }
    pub fn matmul(&mut self, a: Value, b: Value) -> Value {
        self.node("MatMul", &[a, b], vec![])
    }
    pub fn erf(&mut self, x: Value) -> Value {
        self.node("Erf", &[x], vec![])
    }
    pub fn sigmoid(&mut self, x: Value) -> Value {
        self.node("Sigmoid", &[x], vec![])
    }
    pub fn tanh(&mut self, x: Value) -> Value {
        self.node("Tanh", &[x], vec![])
    }
    pub fn neg(&mut self, x: Value) -> Value {
        self.node("Neg", &[x], vec![])
    }
    pub fn sqrt(&mut self, x: Value) -> Value {
        self.node("Sqrt", &[x], vec![])
    }
    pub fn reciprocal(&mut self, x: Value) -> Value {
        self.node("Reciprocal", &[x], vec![])
    }
    pub fn softmax(&mut self, x: Value, axis: i64) -> Value {
        self.node("Softmax", &[x], vec![("axis", Attr::Int(axis))])
    }
    pub fn transpose(&mut self, x: Value, perm: &[i64]) -> Value {
        self.node("Transpose", &[x], vec![("perm", Attr::Ints(perm.to_vec()))])
    }
    /// ONNX `Reshape` (0 copies the input dim, -1 infers one).
    pub fn reshape(&mut self, x: Value, shape: &[i64]) -> Value {
        let s = self.const_i64(shape);
        self.node("Reshape", &[x, s], vec![])
    }
    pub fn reshape_to(&mut self, x: Value, shape: Value) -> Value {
        self.node("Reshape", &[x, shape], vec![])
    }
    pub fn concat(&mut self, xs: &[Value], axis: i64) -> Value {
        self.node("Concat", xs, vec![("axis", Attr::Int(axis))])
    }
    /// Splits `x` into `n` equal parts along `axis`.
    pub fn split_equal(&mut self, x: Value, axis: i64, n: usize) -> Vec<Value> {
        self.node_n("Split", &[Some(x)], vec![("axis", Attr::Int(axis))], n)
    }
    /// Splits `x` into parts of the given sizes along `axis`.
    pub fn split(&mut self, x: Value, axis: i64, sizes: &[i64]) -> Vec<Value> {
        let s = self.const_i64(sizes);
        self.node_n(
            "Split",
            &[Some(x), Some(s)],
            vec![("axis", Attr::Int(axis))],
            sizes.len(),
        )
    }
    pub fn shape(&mut self, x: Value) -> Value {
        self.node("Shape", &[x], vec![])
    }
    /// `x[starts..ends]` along `axes` (constant bounds).
    pub fn slice(&mut self, x: Value, starts: &[i64], ends: &[i64], axes: &[i64]) -> Value {
        let st = self.const_i64(starts);
        let en = self.const_i64(ends);
        let ax = self.const_i64(axes);
        self.node("Slice", &[x, st, en, ax], vec![])
    }
    /// `x[starts..ends]` along `axes` with computed bounds (1-D int64 values).
    pub fn slice_dyn(&mut self, x: Value, starts: Value, ends: Value, axes: &[i64]) -> Value {
        let ax = self.const_i64(axes);
        self.node("Slice", &[x, starts, ends, ax], vec![])
    }
    pub fn gather(&mut self, data: Value, indices: Value, axis: i64) -> Value {
        self.node("Gather", &[data, indices], vec![("axis", Attr::Int(axis))])
    }
    pub fn expand(&mut self, x: Value, shape: Value) -> Value {
        self.node("Expand", &[x, shape], vec![])
    }
    pub fn unsqueeze(&mut self, x: Value, axes: &[i64]) -> Value {
        let a = self.const_i64(axes);
        self.node("Unsqueeze", &[x, a], vec![])
    }
    pub fn cast(&mut self, x: Value, to: crate::DType) -> Value {
        self.node("Cast", &[x], vec![("to", Attr::Int(to.onnx_code() as i64))])
    }
    pub fn where_(&mut self, cond: Value, a: Value, b: Value) -> Value {
        self.node("Where", &[cond, a, b], vec![])
    }
    /// `LayerNormalization` over the last axis; `bias` optional.
    pub fn layer_norm_op(&mut self, x: Value, w: Value, b: Option<Value>, eps: f32) -> Value {
        self.node_n(
            "LayerNormalization",
            &[Some(x), Some(w), b],
            vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
            1,
        )[0]
    }
}
