//! Language-model core: the Llama-architecture transformer, its checkpoint formats, tokenizers
//! and sampling. Every LM method builds on these.

pub mod bench;
pub mod engine;
pub mod export;
pub mod fit;
pub mod fused;
pub mod gguf;
pub mod hf;
pub mod kernels;
pub mod llama;
pub mod llama2c;
pub mod load;
pub mod openai;
pub mod policy;
pub mod quant;
pub mod sample;
pub mod serve;
pub mod tokenizer;

pub use llama::{KvCache, LayerWeights, Llama, LlamaConfig, LlamaWeights};
pub use tokenizer::Tokenizer;
