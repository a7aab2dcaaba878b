//! GPU provider flags shared by the commands that run graphs.

use std::path::PathBuf;

use flamingo_runtime::gpu::GpuOptions;

#[derive(clap::Args, Clone, Debug, Default)]
pub struct GpuArgs {
    /// CUDA device (ort-cuda, ort-tensorrt)
    #[arg(long, default_value_t = 0)]
    pub device_id: i32,
    /// CUDA memory limit in bytes
    #[arg(long)]
    pub gpu_mem_limit: Option<usize>,
    /// TensorRT: build fp16 engines
    #[arg(long)]
    pub trt_fp16: bool,
    /// TensorRT: build int8 engines with the calibration tables of --trt-calibration
    #[arg(long, requires = "trt_calibration")]
    pub trt_int8: bool,
    /// The calibration/ directory written by `flamingo calibrate`
    #[arg(long)]
    pub trt_calibration: Option<PathBuf>,
    /// Engine and timing cache directory (default: MODEL/trt-cache)
    #[arg(long)]
    pub trt_cache: Option<PathBuf>,
}

impl GpuArgs {
    pub fn options(&self) -> GpuOptions {
        GpuOptions {
            device_id: self.device_id,
            memory_limit: self.gpu_mem_limit,
            trt_fp16: self.trt_fp16,
            trt_int8: self.trt_int8,
            calibration_dir: self.trt_calibration.clone(),
            cache_dir: self.trt_cache.clone(),
            ..Default::default()
        }
    }
}
