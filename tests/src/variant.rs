//! The precision variants the suite measures against fp32: a name (the row
//! of [`crate::tolerance`]), the backend that runs it, and how its export
//! is made from a fixture's fp32 export (once per test process).

use std::path::PathBuf;

use anyhow::Result;
use flamingo_calibration::weights::{
    quantize_decoder, quantize_media_graph, BlockOptions, WeightBits,
};
use flamingo_contract::{GraphRole, Precision};
use flamingo_runtime::BackendKind;

use crate::{converted, converted_as, exported, held_out_requests};

/// One precision on one backend.
#[derive(Clone, Copy, Debug)]
pub struct Variant {
    pub name: &'static str,
    pub backend: BackendKind,
    build: fn(&str) -> Result<PathBuf>,
}

impl Variant {
    pub const FP16_TRACT: Variant = Variant {
        name: "fp16",
        backend: BackendKind::Tract,
        build: fp16,
    };
    pub const FP16_ORT: Variant = Variant {
        name: "fp16",
        backend: BackendKind::OrtCpu,
        build: fp16,
    };
    pub const INT8_TRACT: Variant = Variant {
        name: "int8",
        backend: BackendKind::Tract,
        build: |fx| quantized(fx, WeightBits::Int8),
    };
    pub const INT8_ORT: Variant = Variant {
        name: "int8",
        backend: BackendKind::OrtCpu,
        build: |fx| quantized(fx, WeightBits::Int8),
    };
    pub const INT8_NBITS: Variant = Variant {
        name: "int8-ort",
        backend: BackendKind::OrtCpu,
        build: |fx| quantized(fx, WeightBits::Int8Ort { block_size: 32 }),
    };
    pub const INT4: Variant = Variant {
        name: "int4",
        backend: BackendKind::OrtCpu,
        build: |fx| quantized(fx, WeightBits::Int4 { block_size: 32 }),
    };
    pub const INT4_GPTQ: Variant = Variant {
        name: "int4-gptq",
        backend: BackendKind::OrtCpu,
        build: |fx| gptq_int4(fx, 32, &BlockOptions::default()),
    };

    pub const INT8_DYNAMIC: Variant = Variant {
        name: "int8-dynamic",
        backend: BackendKind::OrtCpu,
        build: |fx| quantized_all(fx, WeightBits::Int8Dynamic),
    };

    /// The variant's export of fixture `fx`.
    pub fn export(&self, fx: &str) -> Result<PathBuf> {
        (self.build)(fx)
    }
}

/// The fixture converted to fp16 (float32 islands).
pub fn fp16(fx: &str) -> Result<PathBuf> {
    converted(fx, "fp16", &|_, g| {
        flamingo_calibration::fp16::to_fp16(g).map(Some)
    })
}

/// The fixture as `flamingo convert --precision fp32-ort` writes it
/// (`flamingo_calibration::ort_fuse::fuse_export`): the decoder fused for
/// ONNX Runtime, its KV cache updated in place where self-attention fuses.
pub fn fp32_ort(fx: &str) -> Result<PathBuf> {
    converted_as(fx, "fp32-ort", Precision::Fp32Ort, &|role, g| {
        Ok((role == GraphRole::Decoder).then(|| flamingo_calibration::ort_fuse::fuse_decoder(g).0))
    })
}

/// The fixture's decoder quantised to `bits` (round to nearest), as
/// `flamingo quantize` writes it.
pub fn quantized(fx: &str, bits: WeightBits) -> Result<PathBuf> {
    converted_as(fx, bits.name(), bits.precision(), &move |role, g| {
        if role == GraphRole::Decoder {
            quantize_decoder(g, bits, None, &BlockOptions::default()).map(Some)
        } else {
            Ok(None)
        }
    })
}

/// Every graph of the fixture quantised to `bits` (round to nearest), as
/// `flamingo quantize --include-vision` writes it.
pub fn quantized_all(fx: &str, bits: WeightBits) -> Result<PathBuf> {
    let tag = format!("{}-all", bits.name());
    converted_as(fx, &tag, bits.precision(), &move |role, g| {
        let opts = BlockOptions::default();
        match role {
            GraphRole::Decoder => quantize_decoder(g, bits, None, &opts).map(Some),
            _ => quantize_media_graph(g, bits, None, &opts).map(Some),
        }
    })
}

/// int4 with GPTQ, the Hessians from [`held_out_requests`], as `flamingo
/// quantize --data` writes it (fused for ONNX Runtime).
pub fn gptq_int4(fx: &str, block_size: usize, opts: &BlockOptions) -> Result<PathBuf> {
    let opts = *opts;
    let h = flamingo_calibration::calibrate::hessians(
        &exported(fx)?,
        &held_out_requests(fx)?,
        BackendKind::OrtCpu,
        &mut |_| {},
    )?;
    anyhow::ensure!(h.len() >= 8, "only {} Hessians observed", h.len());
    let tag = format!(
        "int4-gptq-{block_size}{}-head{}",
        if opts.symmetric { "-sym" } else { "" },
        opts.head_bits
    );
    converted_as(fx, &tag, Precision::Int4Weights, &move |role, g| {
        if role == GraphRole::Decoder {
            quantize_decoder(g, WeightBits::Int4 { block_size }, Some(&h), &opts).map(Some)
        } else {
            Ok(None)
        }
    })
}
