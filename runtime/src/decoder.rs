//! Driving `media_kv.onnx` and `decoder.onnx`: the visual-latent cache
//! (media K/V, set once per prompt) and the self-attention KV cache (grows by
//! each step's `present`, can rewind).

use flamingo_contract::{io, GraphRole, KvUpdate};
use ndarray::{Array2, ArrayD, Axis, IxDyn};

use crate::backend::{Input, Resident, Value, ValueRef};
use crate::model::Model;
use crate::{Error, Result};

/// Cross-attention K/V of every gated layer, by graph input name.
#[derive(Clone, Debug, Default)]
pub struct MediaKv {
    pub tensors: Vec<(String, ArrayD<f32>)>,
    /// The same tensors handed to the decoder's backend once (device memory
    /// under the GPU providers), on first use by [`Model::decode`].
    resident: std::sync::OnceLock<Vec<Resident>>,
}

impl MediaKv {
    pub fn new(tensors: Vec<(String, ArrayD<f32>)>) -> MediaKv {
        MediaKv {
            tensors,
            resident: Default::default(),
        }
    }

    /// Rows `idx` of every tensor (beam search reorders, batching gathers).
    pub fn select(&self, idx: &[usize]) -> MediaKv {
        MediaKv::new(
            self.tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.select(Axis(0), idx)))
                .collect(),
        )
    }
}

/// The self-attention cache: per layer `(key, value)` `[batch, kv_heads, len,
/// head_dim]`, held in one of three ways ([`KvStore`]).
#[derive(Clone, Debug)]
pub struct KvCache {
    store: KvStore,
    reserve: usize,
}

/// Where a [`KvCache`] lives.
#[derive(Clone, Debug)]
pub enum KvStore {
    /// On the host (backends that do not bind their I/O; after a rewind or
    /// a beam reorder).
    Host(Vec<(ArrayD<f32>, ArrayD<f32>)>),
    /// Held by the backend between the steps of a decoder that binds its
    /// I/O: each step's `present` (device memory under the GPU providers).
    Resident(Vec<(Resident, Resident)>),
    /// Buffers longer than the cache that each step writes in place (no
    /// per-step copy of the past): decoders whose manifest says `kv_update:
    /// in-place`, under ONNX Runtime on the CPU. `filled` positions are in use.
    InPlace {
        buffers: Vec<(Resident, Resident)>,
        filled: usize,
    },
}

impl Default for KvCache {
    /// An empty host cache.
    fn default() -> KvCache {
        KvCache::new(Vec::new())
    }
}

impl KvCache {
    /// The layers, when the cache is on the host ([`Self::to_host`]).
    pub fn into_host_layers(self) -> Option<Vec<(ArrayD<f32>, ArrayD<f32>)>> {
        match self.store {
            KvStore::Host(l) => Some(l),
            _ => None,
        }
    }
    /// A host cache.
    pub fn new(layers: Vec<(ArrayD<f32>, ArrayD<f32>)>) -> KvCache {
        KvCache {
            store: KvStore::Host(layers),
            reserve: 0,
        }
    }
    /// Sizes in-place buffers for `positions` (prompt + new tokens, up to
    /// 512 past the current need), so they need not grow (they do, by
    /// doubling, if a step goes past it).
    pub fn reserve(&mut self, positions: usize) {
        self.reserve = positions;
    }
    pub fn store(&self) -> &KvStore {
        &self.store
    }
    /// The positions in-place buffers hold (`None`: not in place).
    pub fn capacity(&self) -> Option<usize> {
        match &self.store {
            KvStore::InPlace { buffers, .. } => buffers.first().map(|(k, _)| k.shape()[2]),
            _ => None,
        }
    }
    /// Cached sequence length.
    pub fn len(&self) -> usize {
        match &self.store {
            KvStore::Host(l) => l.first().map(|(k, _)| k.shape()[2]).unwrap_or(0),
            KvStore::Resident(r) => r.first().map(|(k, _)| k.shape()[2]).unwrap_or(0),
            KvStore::InPlace { filled, .. } => *filled,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether the backend holds the cache (no host copy per step).
    pub fn is_resident(&self) -> bool {
        !matches!(self.store, KvStore::Host(_))
    }
    /// The layers, when the cache is on the host.
    pub fn host_layers(&self) -> Option<&[(ArrayD<f32>, ArrayD<f32>)]> {
        match &self.store {
            KvStore::Host(l) => Some(l),
            _ => None,
        }
    }
    /// Brings a resident cache back to the host.
    pub fn to_host(&mut self) -> Result<()> {
        let filled = self.len();
        let resident = match &self.store {
            KvStore::Host(_) => return Ok(()),
            KvStore::Resident(r) | KvStore::InPlace { buffers: r, .. } => r,
        };
        let host = |r: &Resident| -> Result<ArrayD<f32>> {
            let a = r.to_host()?.into_f32("present")?;
            Ok(match a.shape()[2] > filled {
                true => a.slice_axis(Axis(2), (0..filled).into()).to_owned(),
                false => a,
            })
        };
        let mut layers = Vec::with_capacity(resident.len());
        for (k, v) in resident {
            layers.push((host(k)?, host(v)?));
        }
        self.store = KvStore::Host(layers);
        Ok(())
    }
    /// Keeps the first `len` positions (rewind).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if let KvStore::InPlace { filled, .. } = &mut self.store {
            // in-place buffers: the next step overwrites the rest
            *filled = (*filled).min(len);
            return Ok(());
        }
        self.to_host()?;
        if let KvStore::Host(layers) = &mut self.store {
            for (k, v) in layers {
                let n = len.min(k.shape()[2]);
                *k = k.slice_axis(Axis(2), (0..n).into()).to_owned();
                *v = v.slice_axis(Axis(2), (0..n).into()).to_owned();
            }
        }
        Ok(())
    }
    /// Rows `idx` of the batch (beam reordering), on the host.
    pub fn select(&self, idx: &[usize]) -> Result<KvCache> {
        let mut host = self.clone();
        host.to_host()?;
        let layers = host.host_layers().unwrap_or(&[]);
        let mut c = KvCache::new(
            layers
                .iter()
                .map(|(k, v)| (k.select(Axis(0), idx), v.select(Axis(0), idx)))
                .collect(),
        );
        c.reserve = self.reserve;
        Ok(c)
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
            GraphRole::MediaKv,
            vec![(io::LATENTS, ValueRef::F32(latents.view()))],
        )?;
        let mut tensors = Vec::new();
        for name in self.media_kv_names() {
            let t = out
                .get(&name)
                .cloned()
                .ok_or_else(|| Error::Input(format!("media_kv did not return `{name}`")))?
                .into_f32(&name)?;
            tensors.push((name, t));
        }
        Ok(MediaKv::new(tensors))
    }

    /// The decoder's media K/V inputs, in the order [`Self::media_kv`]
    /// returns them.
    pub fn media_kv_names(&self) -> Vec<String> {
        self.manifest
            .model
            .decoder
            .gated_layers
            .iter()
            .flat_map(|&i| [io::media_key(i), io::media_value(i)])
            .collect()
    }

    /// Whether one decoder call takes several new tokens for several rows
    /// over a non-empty cache (ONNX Runtime's `GroupQueryAttention`, the
    /// in-place cache update, takes them one row at a time).
    pub fn steps_rows_over_cache(&self) -> bool {
        self.manifest
            .graphs
            .get(&GraphRole::Decoder)
            .and_then(|g| g.kv_update)
            != Some(KvUpdate::InPlace)
    }

    /// An empty cache for `batch` rows.
    pub fn empty_cache(&self, batch: usize) -> KvCache {
        let d = &self.manifest.model.decoder;
        let z = || ArrayD::<f32>::zeros(IxDyn(&[batch, d.kv_heads, 0, d.head_dim]));
        KvCache::new((0..d.num_layers).map(|_| (z(), z())).collect())
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
        // inputs are borrowed: the caches are not copied to call the graph;
        // with I/O binding, the KV cache and the media K/V stay with the
        // backend between steps and only the logits come back
        let bind = self.binds_io(GraphRole::Decoder);
        if bind && media.resident.get().is_none() {
            let mut up = Vec::with_capacity(media.tensors.len());
            for (_, t) in &media.tensors {
                up.push(self.upload(GraphRole::Decoder, ValueRef::F32(t.view()))?);
            }
            let _ = media.resident.set(up);
        }
        let in_place_graph = self
            .manifest
            .graphs
            .get(&GraphRole::Decoder)
            .and_then(|g| g.kv_update)
            == Some(KvUpdate::InPlace);
        if in_place_graph && b > 1 && s > 1 && !cache.is_empty() {
            return Err(Error::Input(format!(
                "this decoder (ONNX Runtime's GroupQueryAttention) takes several new tokens \
                 over a non-empty cache for one row at a time, not {b}"
            )));
        }
        let in_place = in_place_graph && bind && self.updates_in_place(GraphRole::Decoder);
        let keep = ArrayD::from_elem(IxDyn(&[1]), step.keep.clamp(1, s) as i64);
        let past_names: Vec<(String, String)> = (0..d.num_layers)
            .map(|i| (io::past_key(i), io::past_value(i)))
            .collect();
        let mut inputs: Vec<(&str, Input<'_>)> = vec![
            (
                io::INPUT_IDS,
                Input::Host(ValueRef::I64(step.input_ids.view().into_dyn())),
            ),
            (
                io::ATTENTION_MASK,
                Input::Host(ValueRef::I64(step.attention_mask.view().into_dyn())),
            ),
            (
                io::MEDIA_TIME,
                Input::Host(ValueRef::I64(step.media_time.view().into_dyn())),
            ),
            (
                io::NUM_LOGITS_TO_KEEP,
                Input::Host(ValueRef::I64(keep.view())),
            ),
        ];
        if d.uses_position_ids {
            inputs.push((
                io::POSITION_IDS,
                Input::Host(ValueRef::I64(step.position_ids.view().into_dyn())),
            ));
        }
        if in_place {
            self.ensure_buffers(cache, b, total)?;
        }
        let count = match &cache.store {
            KvStore::Host(l) => l.len(),
            KvStore::Resident(r) | KvStore::InPlace { buffers: r, .. } => r.len(),
        };
        if count != d.num_layers {
            return Err(Error::Input(format!(
                "the KV cache has {count} layers, the decoder {}",
                d.num_layers
            )));
        }
        match &cache.store {
            KvStore::Host(layers) => {
                for ((kn, vn), (k, v)) in past_names.iter().zip(layers) {
                    inputs.push((kn, Input::Host(ValueRef::F32(k.view()))));
                    inputs.push((vn, Input::Host(ValueRef::F32(v.view()))));
                }
            }
            KvStore::Resident(r) | KvStore::InPlace { buffers: r, .. } => {
                for ((kn, vn), (k, v)) in past_names.iter().zip(r) {
                    inputs.push((kn, Input::Resident(k)));
                    inputs.push((vn, Input::Resident(v)));
                }
            }
        }
        match media.resident.get().filter(|_| bind) {
            Some(up) => {
                for ((name, _), r) in media.tensors.iter().zip(up) {
                    inputs.push((name, Input::Resident(r)));
                }
            }
            None => {
                for (name, t) in &media.tensors {
                    inputs.push((name, Input::Host(ValueRef::F32(t.view()))));
                }
            }
        }
        if in_place {
            let names: Vec<(String, String)> = (0..d.num_layers)
                .map(|i| (io::present_key(i), io::present_value(i)))
                .collect();
            let KvStore::InPlace { buffers, .. } = cache.store.clone() else {
                return Err(Error::Input(
                    "in-place KV buffers were not allocated".into(),
                ));
            };
            let mut into: Vec<(&str, &Resident)> = Vec::with_capacity(2 * d.num_layers);
            for ((kn, vn), (k, v)) in names.iter().zip(&buffers) {
                into.push((kn, k));
                into.push((vn, v));
            }
            let (mut out, _) = self.run_graph_io_into(GraphRole::Decoder, inputs, &into)?;
            drop(into);
            cache.store = KvStore::InPlace {
                buffers,
                filled: total,
            };
            return out
                .remove(io::LOGITS)
                .ok_or_else(|| Error::Input("decoder did not return logits".into()))?
                .into_f32(io::LOGITS);
        }
        let present = |n: &str| bind && n.starts_with("present.");
        let (mut out, mut kept) = self.run_graph_io(GraphRole::Decoder, inputs, &present)?;
        let missing = |i: usize| Error::Input(format!("decoder did not return present.{i}"));
        if bind {
            let mut layers = Vec::with_capacity(d.num_layers);
            for i in 0..d.num_layers {
                let k = kept.remove(&io::present_key(i)).ok_or_else(|| missing(i))?;
                let v = kept
                    .remove(&io::present_value(i))
                    .ok_or_else(|| missing(i))?;
                layers.push((k, v));
            }
            cache.store = KvStore::Resident(layers);
        } else {
            let mut layers = Vec::with_capacity(d.num_layers);
            for i in 0..d.num_layers {
                let k = out.remove(&io::present_key(i)).ok_or_else(|| missing(i))?;
                let v = out
                    .remove(&io::present_value(i))
                    .ok_or_else(|| missing(i))?;
                layers.push((k.into_f32("present")?, v.into_f32("present")?));
            }
            cache.store = KvStore::Host(layers);
        }
        out.remove(io::LOGITS)
            .ok_or_else(|| Error::Input("decoder did not return logits".into()))?
            .into_f32(io::LOGITS)
    }
}

impl Model {
    /// Makes `cache` in-place buffers of `batch` rows holding at least
    /// `total` positions: kept when they do, else (re)allocated at the
    /// reserved size (or double) with the cache copied in.
    fn ensure_buffers(&mut self, cache: &mut KvCache, batch: usize, total: usize) -> Result<()> {
        let d = &self.manifest.model.decoder;
        let grown = match &cache.store {
            KvStore::InPlace { buffers, .. } => {
                // written in place only while this cache holds them alone (a
                // clone of the cache shares them: copy on write)
                let alone = buffers.iter().all(|(k, v)| {
                    std::sync::Arc::strong_count(&k.0) == 1
                        && std::sync::Arc::strong_count(&v.0) == 1
                });
                let have = buffers.first().map_or(0, |(k, _)| k.shape()[2]);
                let rows = buffers.first().map_or(0, |(k, _)| k.shape()[0]);
                if alone && rows == batch && have >= total {
                    return Ok(());
                }
                2 * have
            }
            _ => 0,
        };
        // the reserve up to 512 positions ahead: a long `max_new_tokens`
        // that stops early does not hold its whole cache from the start
        let ahead = cache.reserve.min(total + 512);
        let cap = total.max(ahead).max(grown).next_multiple_of(8);
        let past = cache.len();
        cache.to_host()?;
        let (kv_heads, head_dim, layers) = (d.kv_heads, d.head_dim, d.num_layers);
        let host = match std::mem::replace(&mut cache.store, KvStore::Host(Vec::new())) {
            KvStore::Host(l) => l,
            _ => return Err(Error::Input("the KV cache did not come to the host".into())),
        };
        if host.len() != layers {
            return Err(Error::Input(format!(
                "the KV cache has {} layers, the decoder {layers}",
                host.len()
            )));
        }
        let mut buffers = Vec::with_capacity(layers);
        for (k, v) in host {
            let mut pair = Vec::with_capacity(2);
            for a in [k, v] {
                if a.shape() != [batch, kv_heads, past, head_dim] {
                    return Err(Error::Input(format!(
                        "a cached K/V is {:?}, expected [{batch}, {kv_heads}, {past}, {head_dim}]",
                        a.shape()
                    )));
                }
                let mut buf = ArrayD::<f32>::zeros(IxDyn(&[batch, kv_heads, cap, head_dim]));
                buf.slice_axis_mut(Axis(2), (0..past).into()).assign(&a);
                pair.push(self.buffer(GraphRole::Decoder, &Value::F32(buf))?);
            }
            let v = pair.pop();
            match (pair.pop(), v) {
                (Some(k), Some(v)) => buffers.push((k, v)),
                _ => return Err(Error::Input("KV buffer allocation failed".into())),
            }
        }
        cache.store = KvStore::InPlace {
            buffers,
            filled: past,
        };
        Ok(())
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
