//! [`crate::int8_matmul`] as an ONNX Runtime custom operator
//! (`ai.flamingo.MatMulInt8`), its tasks on the session's intra-op threads.

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

use crate::int8_matmul::{Product, DOMAIN, OP};

struct MatMulInt8;

struct MatMulInt8Kernel {
    k: usize,
    n: usize,
}

fn attr(kctx: &KernelContext<'_>, name: &str) -> ort::Result<usize> {
    match kctx.get::<i64>(name) {
        Some(v) if v > 0 => Ok(v as usize),
        other => Err(ort::Error::new(format!(
            "{OP}: attribute {name} must be a positive integer, got {other:?}"
        ))),
    }
}

impl Operator for MatMulInt8 {
    type Kernel<'attr> = MatMulInt8Kernel;

    fn name(&self) -> &str {
        OP
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Int8),
            OperatorInput::required(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<MatMulInt8Kernel> {
        Ok(MatMulInt8Kernel {
            k: attr(kctx, "K")?,
            n: attr(kctx, "N")?,
        })
    }
}

fn input<'c>(ctx: &'c ComputeContext, i: usize) -> ort::Result<ort::value::ValueRef<'c>> {
    ctx.input(i)?
        .ok_or_else(|| ort::Error::new(format!("{OP}: input {i} is missing")))
}

impl Kernel for MatMulInt8Kernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let (a, b, s) = (input(ctx, 0)?, input(ctx, 1)?, input(ctx, 2)?);
        let (a_shape, a) = a.try_extract_tensor::<f32>()?;
        let (_, b) = b.try_extract_tensor::<i8>()?;
        let (_, s) = s.try_extract_tensor::<f32>()?;
        let last = a_shape.last().copied().unwrap_or(0);
        if last != self.k as i64 {
            return Err(ort::Error::new(format!(
                "{OP}: input of shape {a_shape:?} does not end in K = {}",
                self.k
            )));
        }
        let mut shape: Vec<i64> = a_shape.to_vec();
        if let Some(l) = shape.last_mut() {
            *l = self.n as i64;
        }
        let mut y = ctx
            .output(0, shape)?
            .ok_or_else(|| ort::Error::new(format!("{OP}: no output")))?;
        let (_, y) = y.try_extract_tensor_mut::<f32>()?;
        let p = Product::new(a, self.k, b, s, self.n, y).map_err(ort::Error::new)?;
        match p.tasks() {
            0 => {}
            1 => p.run(0),
            t => ctx.par_for(t, 0, |i| p.run(i))?,
        }
        Ok(())
    }
}

/// The operator domain every ONNX Runtime session of this runtime gets.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?.add(MatMulInt8)
}
