//! [`crate::int8_matmul`] and [`crate::int4_matmul`] as ONNX Runtime custom
//! operators (`ai.flamingo.MatMulInt8`, `ai.flamingo.MatMulInt4`), their
//! tasks on the session's intra-op threads.

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

use crate::{int4_matmul, int8_matmul};

/// Which of the two operators.
#[derive(Clone, Copy)]
enum Bits {
    Int8,
    Int4,
}

impl Bits {
    fn op(self) -> &'static str {
        match self {
            Bits::Int8 => int8_matmul::OP,
            Bits::Int4 => int4_matmul::OP,
        }
    }
}

struct MatMulQ(Bits);

struct MatMulQKernel {
    bits: Bits,
    k: usize,
    n: usize,
    /// MatMulInt4's scale block
    block_size: usize,
}

fn attr(op: &str, kctx: &KernelContext<'_>, name: &str) -> ort::Result<usize> {
    match kctx.get::<i64>(name) {
        Some(v) if v > 0 => Ok(v as usize),
        other => Err(ort::Error::new(format!(
            "{op}: attribute {name} must be a positive integer, got {other:?}"
        ))),
    }
}

impl Operator for MatMulQ {
    type Kernel<'attr> = MatMulQKernel;

    fn name(&self) -> &str {
        self.0.op()
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let weights = match self.0 {
            Bits::Int8 => TensorElementType::Int8,
            Bits::Int4 => TensorElementType::Uint8,
        };
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(weights),
            OperatorInput::required(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, kctx: &KernelContext<'attr>) -> ort::Result<MatMulQKernel> {
        let op = self.0.op();
        let block_size = match kctx.get::<i64>("block_size") {
            None => int4_matmul::BLOCK,
            Some(_) => attr(op, kctx, "block_size")?,
        };
        Ok(MatMulQKernel {
            bits: self.0,
            k: attr(op, kctx, "K")?,
            n: attr(op, kctx, "N")?,
            block_size,
        })
    }
}

fn input<'c>(op: &str, ctx: &'c ComputeContext, i: usize) -> ort::Result<ort::value::ValueRef<'c>> {
    ctx.input(i)?
        .ok_or_else(|| ort::Error::new(format!("{op}: input {i} is missing")))
}

/// Runs a product's tasks on the session's threads.
fn run_tasks(
    ctx: &ComputeContext,
    tasks: usize,
    run: impl Fn(usize) + Sync + Send,
) -> ort::Result<()> {
    match tasks {
        0 => {}
        1 => run(0),
        t => ctx.par_for(t, 0, run)?,
    }
    Ok(())
}

impl Kernel for MatMulQKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let op = self.bits.op();
        let (a, b, s) = (input(op, ctx, 0)?, input(op, ctx, 1)?, input(op, ctx, 2)?);
        let (a_shape, a) = a.try_extract_tensor::<f32>()?;
        let (_, s) = s.try_extract_tensor::<f32>()?;
        let last = a_shape.last().copied().unwrap_or(0);
        if last != self.k as i64 {
            return Err(ort::Error::new(format!(
                "{op}: input of shape {a_shape:?} does not end in K = {}",
                self.k
            )));
        }
        let mut shape: Vec<i64> = a_shape.to_vec();
        if let Some(l) = shape.last_mut() {
            *l = self.n as i64;
        }
        let mut y = ctx
            .output(0, shape)?
            .ok_or_else(|| ort::Error::new(format!("{op}: no output")))?;
        let (_, y) = y.try_extract_tensor_mut::<f32>()?;
        match self.bits {
            Bits::Int8 => {
                let (_, b) = b.try_extract_tensor::<i8>()?;
                let p = int8_matmul::Product::new(a, self.k, b, s, self.n, y)
                    .map_err(ort::Error::new)?;
                run_tasks(ctx, p.tasks(), |i| p.run(i))
            }
            Bits::Int4 => {
                let (_, b) = b.try_extract_tensor::<u8>()?;
                let p = int4_matmul::Product::new(a, self.k, b, (s, self.block_size), self.n, y)
                    .map_err(ort::Error::new)?;
                run_tasks(ctx, p.tasks(), |i| p.run(i))
            }
        }
    }
}

/// The operator domain every ONNX Runtime session of this runtime gets.
pub fn domain() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(int8_matmul::DOMAIN)?
        .add(MatMulQ(Bits::Int8))?
        .add(MatMulQ(Bits::Int4))
}
