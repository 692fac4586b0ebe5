//! The key/value cache for incremental decoding: each layer keeps the keys and values of all
//! positions seen so far, so a decode step only computes the new token's.

use burn::tensor::Tensor;

#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    /// `[batch, heads, positions, head_dim]` each, or `None` before the first step.
    entries: Option<(Tensor<4>, Tensor<4>)>,
}

impl LayerCache {
    /// Appends this step's keys and values; returns all keys and values so far.
    pub fn append(&mut self, key: Tensor<4>, value: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let (key, value) = match self.entries.take() {
            None => (key, value),
            Some((k, v)) => (Tensor::cat(vec![k, key], 2), Tensor::cat(vec![v, value], 2)),
        };
        self.entries = Some((key.clone(), value.clone()));
        (key, value)
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache { layers: vec![LayerCache::default(); num_layers] }
    }

    pub fn layer(&mut self, index: usize) -> &mut LayerCache {
        &mut self.layers[index]
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
