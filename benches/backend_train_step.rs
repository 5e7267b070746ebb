//! One train step (forward + backward + AdamW) of a small causal transformer LM on each CPU
//! backend: the measurement behind the default backend (see benches/README.md).
//!
//! `cargo bench --bench backend_train_step --features ndarray` (without the feature, only
//! `flex` is measured).

use std::hint::black_box;

use burn::module::Module;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Int, Tensor, TensorData};
use criterion::{Criterion, criterion_group, criterion_main};
use lmlab::burn;

const VOCAB: usize = 256;
const D_MODEL: usize = 128;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const BATCH: usize = 8;
const SEQ: usize = 64;

#[derive(Module, Debug)]
struct TinyLm {
    embed: Embedding,
    blocks: TransformerEncoder,
    head: Linear,
}

impl TinyLm {
    fn new(device: &Device) -> Self {
        Self {
            embed: EmbeddingConfig::new(VOCAB, D_MODEL).init(device),
            blocks: TransformerEncoderConfig::new(D_MODEL, 4 * D_MODEL, HEADS, LAYERS)
                .with_dropout(0.0)
                .with_norm_first(true)
                .init(device),
            head: LinearConfig::new(D_MODEL, VOCAB).init(device),
        }
    }

    fn loss(&self, tokens: Tensor<2, Int>) -> Tensor<1> {
        let device = tokens.device();
        let inputs = tokens.clone().slice([0..BATCH, 0..SEQ - 1]);
        let targets = tokens.slice([0..BATCH, 1..SEQ]);
        let x = self.embed.forward(inputs);
        let mask = generate_autoregressive_mask(BATCH, SEQ - 1, &device);
        let h = self
            .blocks
            .forward(TransformerEncoderInput::new(x).mask_attn(mask));
        let logits = self.head.forward(h).reshape([BATCH * (SEQ - 1), VOCAB]);
        CrossEntropyLossConfig::new()
            .init(&device)
            .forward(logits, targets.reshape([BATCH * (SEQ - 1)]))
    }
}

fn train_step(c: &mut Criterion, name: &str, device: Device) {
    let device = device.autodiff();
    let mut model = TinyLm::new(&device);
    let mut optim: ModuleOptimizer = AdamWConfig::new().init();
    let ids: Vec<i64> = (0..BATCH * SEQ)
        .map(|i| ((i * 7919) % VOCAB) as i64)
        .collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [BATCH, SEQ]), &device);
    c.bench_function(&format!("train_step/{name}"), |b| {
        b.iter(|| {
            let loss = model.loss(tokens.clone());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model.clone(), grads);
            black_box(loss.into_scalar::<f32>());
        })
    });
}

fn backends(c: &mut Criterion) {
    train_step(c, "flex", Device::flex());
    #[cfg(feature = "ndarray")]
    train_step(c, "ndarray", Device::ndarray());
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_secs(2));
    targets = backends
}
criterion_main!(benches);
