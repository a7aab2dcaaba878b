//! Driving `media_kv.onnx` and `decoder.onnx`: the visual-latent cache
//! (media K/V, set once per prompt) and the self-attention KV cache (grows by
//! each step's `present`, can rewind).

use flamingo_graphs::contract as io;
use ndarray::{Array2, ArrayD, Axis, IxDyn};

use crate::backend::ValueRef;
use crate::model::Model;
use crate::{Error, Result};

/// Cross-attention K/V of every gated layer, by graph input name.
#[derive(Clone, Debug)]
pub struct MediaKv {
    pub tensors: Vec<(String, ArrayD<f32>)>,
}

impl MediaKv {
    /// Rows `idx` of every tensor (beam search reorders, batching gathers).
    pub fn select(&self, idx: &[usize]) -> MediaKv {
        MediaKv {
            tensors: self
                .tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.select(Axis(0), idx)))
                .collect(),
        }
    }
}

/// The self-attention cache: per layer `(key, value)` `[batch, kv_heads, len, head_dim]`.
#[derive(Clone, Debug)]
pub struct KvCache {
    pub layers: Vec<(ArrayD<f32>, ArrayD<f32>)>,
}

impl KvCache {
    /// Cached sequence length.
    pub fn len(&self) -> usize {
        self.layers.first().map(|(k, _)| k.shape()[2]).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Keeps the first `len` positions (rewind).
    pub fn truncate(&mut self, len: usize) {
        for (k, v) in &mut self.layers {
            let n = len.min(k.shape()[2]);
            *k = k.slice_axis(Axis(2), (0..n).into()).to_owned();
            *v = v.slice_axis(Axis(2), (0..n).into()).to_owned();
        }
    }
    /// Rows `idx` of the batch (beam reordering).
    pub fn select(&self, idx: &[usize]) -> KvCache {
        KvCache {
            layers: self
                .layers
                .iter()
                .map(|(k, v)| (k.select(Axis(0), idx), v.select(Axis(0), idx)))
                .collect(),
        }
    }
}

/// One decoder call's token-side inputs.
#[derive(Clone, Debug)]
pub struct Step {
    pub input_ids: Array2<i64>,
    /// `[batch, past + seq]`.
    pub attention_mask: Array2<i64>,
    pub position_ids: Array2<i64>,
    pub media_time: Array2<i64>,
    /// Positions at the end that get logits (1 for a decode step).
    pub keep: usize,
}

impl Model {
    /// The media K/V (visual-latent cache) of `latents [B,T,n,D]`.
    pub fn media_kv(&mut self, latents: ArrayD<f32>) -> Result<MediaKv> {
        let out = self.run_graph(
            "media_kv",
            vec![(io::LATENTS, ValueRef::F32(latents.view()))],
        )?;
        let mut tensors = Vec::new();
        for i in self.manifest.model.decoder.gated_layers.clone() {
            for name in [io::media_key(i), io::media_value(i)] {
                let t = out
                    .get(&name)
                    .cloned()
                    .ok_or_else(|| Error::Input(format!("media_kv did not return `{name}`")))?
                    .into_f32(&name)?;
                tensors.push((name, t));
            }
        }
        Ok(MediaKv { tensors })
    }

    /// An empty cache for `batch` rows.
    pub fn empty_cache(&self, batch: usize) -> KvCache {
        let d = &self.manifest.model.decoder;
        let z = || ArrayD::<f32>::zeros(IxDyn(&[batch, d.kv_heads, 0, d.head_dim]));
        KvCache {
            layers: (0..d.num_layers).map(|_| (z(), z())).collect(),
        }
    }

    /// Runs one decoder call, appending this step's K/V to `cache`; returns
    /// logits `[batch, keep, vocab]`.
    pub fn decode(
        &mut self,
        step: &Step,
        media: &MediaKv,
        cache: &mut KvCache,
    ) -> Result<ArrayD<f32>> {
        let d = self.manifest.model.decoder.clone();
        let (b, s) = step.input_ids.dim();
        let total = cache.len() + s;
        if step.attention_mask.dim() != (b, total) {
            return Err(Error::Input(format!(
                "attention_mask is {:?}, expected [{b}, {total}] (cached {} + {s} new)",
                step.attention_mask.shape(),
                cache.len()
            )));
        }
        if step.media_time.dim() != (b, s) || step.position_ids.dim() != (b, s) {
            return Err(Error::Input(
                "media_time and position_ids must be [batch, seq]".into(),
            ));
        }
        if let Some(max) = self.manifest.model.lm.max_position_embeddings {
            if d.uses_position_ids && total > max {
                return Err(Error::Input(format!(
                    "the context ({total} tokens) is longer than the model allows ({max})"
                )));
            }
        }
        if let Some(bad) = step
            .input_ids
            .iter()
            .find(|&&t| t < 0 || t as usize >= d.vocab_size)
        {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary (size {})",
                d.vocab_size
            )));
        }
        for (_, t) in &media.tensors {
            if t.shape()[0] != b {
                return Err(Error::Input(format!(
                    "media K/V batch {} != token batch {b}",
                    t.shape()[0]
                )));
            }
        }
        // inputs are borrowed: the caches are not copied to call the graph
        let keep = ArrayD::from_elem(IxDyn(&[1]), step.keep.clamp(1, s) as i64);
        let past_names: Vec<(String, String)> = (0..cache.layers.len())
            .map(|i| (io::past_key(i), io::past_value(i)))
            .collect();
        let mut inputs: Vec<(&str, ValueRef<'_>)> = vec![
            (
                io::INPUT_IDS,
                ValueRef::I64(step.input_ids.view().into_dyn()),
            ),
            (
                io::ATTENTION_MASK,
                ValueRef::I64(step.attention_mask.view().into_dyn()),
            ),
            (
                io::MEDIA_TIME,
                ValueRef::I64(step.media_time.view().into_dyn()),
            ),
            (io::NUM_LOGITS_TO_KEEP, ValueRef::I64(keep.view())),
        ];
        if d.uses_position_ids {
            inputs.push((
                io::POSITION_IDS,
                ValueRef::I64(step.position_ids.view().into_dyn()),
            ));
        }
        for ((kn, vn), (k, v)) in past_names.iter().zip(&cache.layers) {
            inputs.push((kn, ValueRef::F32(k.view())));
            inputs.push((vn, ValueRef::F32(v.view())));
        }
        for (name, t) in &media.tensors {
            inputs.push((name, ValueRef::F32(t.view())));
        }
        let mut out = self.run_graph("decoder", inputs)?;
        for (i, layer) in cache.layers.iter_mut().enumerate() {
            let k = out
                .remove(&io::present_key(i))
                .ok_or_else(|| Error::Input(format!("decoder did not return present.{i}.key")))?;
            let v = out
                .remove(&io::present_value(i))
                .ok_or_else(|| Error::Input(format!("decoder did not return present.{i}.value")))?;
            *layer = (k.into_f32("present")?, v.into_f32("present")?);
        }
        out.remove(io::LOGITS)
            .ok_or_else(|| Error::Input("decoder did not return logits".into()))?
            .into_f32(io::LOGITS)
    }
}

/// `media_time` of a prompt: the running count of `media_token`s.
pub fn media_time(ids: &[i64], media_token: i64) -> Vec<i64> {
    let mut n = 0;
    ids.iter()
        .map(|&t| {
            if t == media_token {
                n += 1;
            }
            n
        })
        .collect()
}

/// Position ids from a left-padded mask: `cumsum(mask) - 1`, padded slots 1.
pub fn position_ids(mask: &[i64]) -> Vec<i64> {
    let mut c = 0;
    mask.iter()
        .map(|&m| {
            c += m;
            if m == 0 {
                1
            } else {
                c - 1
            }
        })
        .collect()
}
