//! Loading any supported checkpoint: the format is detected from the file, and the tokenizer
//! found beside it unless one is named.

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::error::Error;
use crate::lm::gguf::Gguf;
use crate::lm::llama::{Llama, LlamaConfig, LlamaWeights};
use crate::lm::llama2c::{self, Llama2cTokenizer};
use crate::lm::quant::{QKind, QLlama};
use crate::lm::tokenizer::Tokenizer;

/// The checkpoint formats lmlab reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// llama2.c `.bin` (with `tok*.bin`).
    Llama2c,
    /// GGUF (magic `GGUF`).
    Gguf,
    /// Hugging Face `model.safetensors` + `config.json` + `tokenizer.json`.
    Safetensors,
}

/// Detects the format of `path` from its contents.
pub fn detect(path: &Path) -> Result<Format, Error> {
    if path.is_dir() {
        return Ok(Format::Safetensors);
    }
    let mut head = [0u8; 8];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| Error::io("read", path, e))?;
        f.read(&mut head).map_err(|e| Error::io("read", path, e))?
    };
    if n >= 4 && &head[..4] == b"GGUF" {
        return Ok(Format::Gguf);
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        return Ok(Format::Safetensors);
    }
    if n < 8 {
        return Err(Error::Usage(format!(
            "{}: too short to be a checkpoint",
            path.display()
        )));
    }
    Ok(Format::Llama2c)
}

/// A loaded model (the burn [`Llama`] unless said otherwise) with its tokenizer and the token
/// ids that end a generation.
pub struct Loaded<M = Llama> {
    pub model: M,
    pub tokenizer: Tokenizer,
    /// Generation stops on any of these.
    pub stop_ids: Vec<u32>,
    pub format: Format,
    /// The model's chat template (Jinja), when the checkpoint carries one.
    pub chat_template: Option<String>,
}

impl<M> Loaded<M> {
    /// `message` as a user turn in the model's chat template, ready for the assistant's
    /// answer (`add_generation_prompt`).
    pub fn chat_prompt(&self, message: &str) -> Result<String, Error> {
        let template = self.chat_template.as_deref().ok_or_else(|| {
            Error::Usage("this checkpoint has no chat template; use --prompt".into())
        })?;
        render_chat(template, &[("user".into(), message.into())])
    }
}

/// A conversation (`(role, content)` turns) in a chat template (Jinja), ready for the
/// assistant's answer (`add_generation_prompt`). BOS is left to the tokenizer.
pub fn render_chat(template: &str, messages: &[(String, String)]) -> Result<String, Error> {
    let mut env = minijinja::Environment::new();
    env.add_template("chat", template)
        .map_err(|e| Error::Usage(format!("the chat template does not parse: {e}")))?;
    let t = env
        .get_template("chat")
        .map_err(|e| Error::Usage(e.to_string()))?;
    let messages: Vec<minijinja::Value> = messages
        .iter()
        .map(|(role, content)| minijinja::context! { role => role, content => content })
        .collect();
    t.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => "",
        eos_token => "",
    })
    .map_err(|e| Error::Usage(format!("rendering the chat template: {e}")))
}

fn llama2c_tokenizer_beside(model: &Path, vocab: usize) -> Option<PathBuf> {
    let dir = model.parent()?;
    let named = dir.join(format!("tok{vocab}.bin"));
    if named.is_file() {
        return Some(named);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("tok") && n.ends_with(".bin"))
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

/// A checkpoint's weights as read, before a model is built from them.
enum Source {
    Weights(LlamaConfig, LlamaWeights),
    /// The GGUF file itself (its configuration already checked), so its blocks can be kept.
    Gguf(Box<Gguf>),
}

/// The tokenizer of the checkpoint at `path` (of a GGUF file, read from its metadata alone:
/// vocabulary-only files work), or the one named.
pub fn tokenizer(path: &Path, tokenizer: Option<&Path>) -> Result<Tokenizer, Error> {
    if detect(path)? == Format::Gguf && tokenizer.is_none() {
        let g = crate::lm::gguf::load(path)?;
        return g
            .tokenizer()
            .map_err(|e| Error::Usage(format!("{}: no usable tokenizer: {e}", path.display())));
    }
    Ok(read(path, tokenizer)?.tokenizer)
}

/// Loads the checkpoint at `path` onto `device`.
pub fn load(path: &Path, tokenizer: Option<&Path>, device: &Device) -> Result<Loaded, Error> {
    let (source, read) = read(path, tokenizer)?.split();
    let model = match source {
        Source::Weights(config, weights) => Llama::from_weights(config, weights, device)
            .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?,
        Source::Gguf(g) => {
            let bad = |e: String| {
                Error::Usage(format!(
                    "{}: not a usable GGUF checkpoint: {e}",
                    path.display()
                ))
            };
            let config = g.config().map_err(bad)?;
            let weights = g.weights(&config).map_err(bad)?;
            Llama::from_weights(config, weights, device).map_err(bad)?
        }
    };
    Ok(read.with_model(model))
}

/// Loads the checkpoint at `path` for block-quantized CPU decoding
/// ([`QLlama`](crate::lm::quant::QLlama)). With `kind` `None` a GGUF file keeps its own
/// Q8_0 / Q4_1 blocks (shared with the file's buffer) and other formats are quantized to Q8_0;
/// with `Some(kind)` every format's weights are (re)quantized to `kind`.
pub fn load_quantized(
    path: &Path,
    tokenizer: Option<&Path>,
    kind: Option<QKind>,
) -> Result<Loaded<QLlama>, Error> {
    let (source, read) = read(path, tokenizer)?.split();
    let bad = |e: String| {
        Error::Usage(format!(
            "{}: not a usable GGUF checkpoint: {e}",
            path.display()
        ))
    };
    let model = match (source, kind) {
        (Source::Weights(config, weights), kind) => {
            QLlama::from_weights(config, weights, kind.unwrap_or(QKind::Q8_0))
        }
        (Source::Gguf(g), None) => QLlama::from_gguf(*g).map_err(bad)?,
        (Source::Gguf(g), Some(kind)) => {
            let config = g.config().map_err(bad)?;
            let weights = g.weights(&config).map_err(bad)?;
            drop(g);
            QLlama::from_weights(config, weights, kind)
        }
    };
    Ok(read.with_model(model))
}

impl<M> Loaded<M> {
    /// The model, and the rest to put another model into.
    fn split(self) -> (M, Loaded<()>) {
        let rest = Loaded {
            model: (),
            tokenizer: self.tokenizer,
            stop_ids: self.stop_ids,
            format: self.format,
            chat_template: self.chat_template,
        };
        (self.model, rest)
    }
}

impl Loaded<()> {
    fn with_model<N>(self, model: N) -> Loaded<N> {
        Loaded {
            model,
            tokenizer: self.tokenizer,
            stop_ids: self.stop_ids,
            format: self.format,
            chat_template: self.chat_template,
        }
    }
}

fn read(path: &Path, tokenizer: Option<&Path>) -> Result<Loaded<Source>, Error> {
    match detect(path)? {
        Format::Llama2c => {
            let (config, weights) = llama2c::load_checkpoint(path)?;
            let vocab = config.vocab_size;
            let tok_path = match tokenizer {
                Some(p) => p.to_path_buf(),
                None => llama2c_tokenizer_beside(path, vocab).ok_or_else(|| {
                    Error::Usage(format!(
                        "{}: no llama2.c tokenizer (tok{vocab}.bin) beside it; name one with --tokenizer",
                        path.display()
                    ))
                })?,
            };
            let tok = Llama2cTokenizer::load(&tok_path, vocab)?;
            let model = Source::Weights(config, weights);
            Ok(Loaded {
                model,
                tokenizer: Tokenizer::Llama2c(tok),
                // The BOS token delimits stories in llama2.c models.
                stop_ids: vec![llama2c::BOS, llama2c::EOS],
                format: Format::Llama2c,
                chat_template: None,
            })
        }
        Format::Safetensors => {
            let (config, weights) = crate::lm::hf::load(path)?;
            let (config_path, _) = crate::lm::hf::files(path)?;
            let hf: crate::lm::hf::HfConfig = serde_json::from_str(
                &std::fs::read_to_string(&config_path)
                    .map_err(|e| Error::io("read", &config_path, e))?,
            )
            .map_err(|e| Error::Usage(format!("{}: {e}", config_path.display())))?;
            let eos = match &hf.eos_token_id {
                Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32),
                Some(serde_json::Value::Array(a)) => {
                    a.first().and_then(|n| n.as_u64()).map(|n| n as u32)
                }
                _ => None,
            }
            .unwrap_or(2);
            let tok_path = tokenizer
                .map(Path::to_path_buf)
                .unwrap_or_else(|| config_path.with_file_name("tokenizer.json"));
            let tok = Tokenizer::from_hf_file(&tok_path, hf.bos_token_id, eos)?;
            let model = Source::Weights(config, weights);
            let chat_template =
                std::fs::read_to_string(config_path.with_file_name("tokenizer_config.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v["chat_template"].as_str().map(str::to_string));
            Ok(Loaded {
                model,
                tokenizer: tok,
                stop_ids: vec![eos],
                format: Format::Safetensors,
                chat_template,
            })
        }
        Format::Gguf => {
            let bad = |e: String| {
                Error::Usage(format!(
                    "{}: not a usable GGUF checkpoint: {e}",
                    path.display()
                ))
            };
            // The tokenizer is built from the metadata before the tensor data is read.
            let (g, read) = crate::lm::gguf::load_with(path, |g| -> Result<_, Error> {
                g.config().map_err(bad)?;
                let tok = match tokenizer {
                    Some(p) => Tokenizer::from_hf_file(p, None, 2)?,
                    None => g.tokenizer().map_err(bad)?,
                };
                let mut stop_ids = vec![tok.eos()];
                // Chat models end a turn with <|im_end|> / <|eot_id|> / <end_of_turn> as well.
                for special in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"] {
                    stop_ids.extend(g.token_id(special));
                }
                let chat_template = g.chat_template().map(str::to_string);
                g.drop_vocabulary();
                Ok((tok, stop_ids, chat_template))
            })?;
            let (tok, stop_ids, chat_template) = read?;
            Ok(Loaded {
                model: Source::Gguf(Box::new(g)),
                tokenizer: tok,
                stop_ids,
                format: Format::Gguf,
                chat_template,
            })
        }
    }
}
