//! `flamingo-eval`: what OpenFlamingo's eval suite (open_flamingo 2.0.1,
//! `open_flamingo/eval/`) computes, in Rust, so that a compiled export can
//! be scored on the paper's few-shot benchmarks:
//!
//! - [`vqa`]: VQA accuracy with the official answer normalisation
//!   (`vqa_metric.py`'s `VQAEval`, its quirks included);
//! - [`cider`]: CIDEr-D as pycocoevalcap 1.2 computes it, over [`ptb`],
//!   the Penn Treebank tokenisation its Stanford CoreNLP `PTBTokenizer`
//!   applies first;
//! - [`classify`]: close-ended classification's top-k and ROC-AUC;
//! - [`prompt`]: the eval's prompts and the post-processing of generations;
//! - [`data`]: the datasets in their published formats;
//! - [`run`]: the eval loop over a [`flamingo_runtime::Pipeline`].
//!
//! Every function is tested against values the reference code gave
//! (`eval/reference/metrics.py` wrote `eval/tests/data/metrics.json`).
//!
//! ```
//! let humans = ["two"; 10].map(String::from);
//! assert_eq!(flamingo_eval::vqa::accuracy("2", &humans), 1.0);
//! ```

pub mod cider;
pub mod classify;
pub mod data;
pub mod prompt;
pub mod ptb;
pub mod run;
pub mod vqa;
