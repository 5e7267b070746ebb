//! `[policy] use = "openai"`: a model behind an OpenAI-compatible HTTP server (vLLM, SGLang,
//! llama-cpp-python's server, `lmlab serve`) as a [`Policy`].
//!
//! - Sampling is `POST /v1/completions` with `n`, `temperature`, `top_p`, `max_tokens`,
//!   `stop`, `seed` and `logprobs: 1`. A server that returns fewer choices than `n`
//!   (llama-cpp-python ignores `n`) is asked again, with the next seeds, for the rest. Token
//!   ids are the server's when it returns them (`token_ids`, vLLM's and `lmlab serve`'s),
//!   otherwise the completion text encoded with the local tokenizer.
//! - Scoring is `echo: true` + `logprobs` + `max_tokens: 1`: the server returns the prompt's
//!   tokens with their log-probabilities, and the one generated token is dropped
//!   (llama-cpp-python reads `max_tokens: 0` as "no limit"). The prompt goes as token ids
//!   where the server takes them (vLLM, `lmlab serve`) and otherwise as text; the response's
//!   tokens are found by the returned tokens' text offsets, not by re-tokenising, so a server
//!   whose tokenization differs still scores exactly the response's characters. BOS: the
//!   server adds its own (the ids sent leave ours out), and the first echoed token's
//!   log-probability, which OpenAI's format leaves null, belongs to the prompt.
//! - A server that echoes no prompt log-probabilities (llama.cpp's own `llama-server`) is an
//!   error that says so.
//! - Every request has a timeout and is retried with exponential backoff on connection errors,
//!   429 and 5xx; at most `concurrency` run at once. A server that dies mid-run gives an error
//!   after the retries, never a hang.
//!
//! The HTTP client is reqwest on a small tokio runtime that the policy owns; [`Policy`]'s
//! methods block on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::lm::Tokenizer;
use crate::policy::{Completion, Policy, PolicyInit, SamplingParams, Sequence, SequenceLogProbs};
use crate::registry::ConfigError;

/// Configuration of the `openai` policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// The API root, `/v1` included (`http://127.0.0.1:8000/v1`).
    pub base_url: String,
    /// The `model` field of each request.
    pub model: String,
    /// The environment variable holding the API key (sent as a bearer token when set).
    pub api_key_env: String,
    /// The served model's tokenizer: a GGUF file (its metadata), `tokenizer.json`, or any
    /// checkpoint lmlab reads. Prompts are encoded with it (BOS first) and completions
    /// decoded.
    pub tokenizer: PathBuf,
    /// Seconds before a request is abandoned (and retried).
    pub timeout_s: f64,
    /// Attempts after the first, with backoff 0.5 s, 1 s, 2 s, …
    pub retries: u32,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8000/v1".into(),
            model: "default".into(),
            api_key_env: "OPENAI_API_KEY".into(),
            tokenizer: PathBuf::new(),
            timeout_s: 120.0,
            retries: 3,
            concurrency: 8,
        }
    }
}

impl OpenAiConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(ConfigError::field(
                "base_url",
                format!("`{}` is not an http:// or https:// URL", self.base_url),
            ));
        }
        if self.tokenizer.as_os_str().is_empty() {
            return Err(ConfigError::field(
                "tokenizer",
                "name the served model's tokenizer (a GGUF file, tokenizer.json or checkpoint)",
            ));
        }
        if !self.tokenizer.exists() {
            return Err(ConfigError::field(
                "tokenizer",
                format!("{} does not exist", self.tokenizer.display()),
            ));
        }
        if !(self.timeout_s > 0.0 && self.timeout_s.is_finite()) {
            return Err(ConfigError::field("timeout_s", "must be a positive number"));
        }
        if self.concurrency == 0 {
            return Err(ConfigError::field("concurrency", "must be at least 1"));
        }
        Ok(())
    }
}

/// A model behind an OpenAI-compatible server (see the [module](self) docs).
pub struct OpenAiPolicy {
    pub config: OpenAiConfig,
    tokenizer: Tokenizer,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    limit: Arc<tokio::sync::Semaphore>,
    /// Whether the server takes prompts as token ids (found out on the first scoring call).
    ids_ok: std::sync::OnceLock<bool>,
}

/// A request that failed for good, with whether retrying could help.
#[derive(Debug)]
struct Failure {
    message: String,
    retry: bool,
}

impl OpenAiPolicy {
    /// A client for `config` (the tokenizer is read now; nothing is sent yet).
    pub fn new(config: OpenAiConfig) -> anyhow::Result<Self> {
        let tokenizer = crate::lm::load::tokenizer(&config.tokenizer, None)
            .or_else(|_| {
                Tokenizer::from_hf_file(&config.tokenizer, None, 2).map_err(anyhow::Error::from)
            })
            .map_err(|e| anyhow::anyhow!("[policy] tokenizer: {e}"))?;
        if config.base_url.starts_with("https://") && !cfg!(feature = "tls") {
            anyhow::bail!(
                "[policy] base_url is https://, and this build has no TLS: rebuild with \
                 `--features lmlab/tls`, or serve over http:// on a trusted network"
            );
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(key) = std::env::var(&config.api_key_env)
            && !key.is_empty()
        {
            let value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    anyhow::anyhow!("${} is not a valid header value", config.api_key_env)
                })?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(config.timeout_s))
            .connect_timeout(Duration::from_secs_f64(config.timeout_s.min(10.0)))
            .default_headers(headers)
            .build()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(Self {
            limit: Arc::new(tokio::sync::Semaphore::new(config.concurrency)),
            config,
            tokenizer,
            client,
            runtime,
            ids_ok: std::sync::OnceLock::new(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.config.base_url.trim_end_matches('/'))
    }

    /// POSTs every body to `path` (at most `concurrency` at once, each retried), answers in
    /// order.
    fn post_all(&self, path: &str, bodies: Vec<Value>) -> Vec<Result<Value, Failure>> {
        let url = self.url(path);
        self.runtime.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for (i, body) in bodies.into_iter().enumerate() {
                let (client, url, limit) = (self.client.clone(), url.clone(), self.limit.clone());
                let retries = self.config.retries;
                set.spawn(async move {
                    let _permit = limit.acquire_owned().await.expect("never closed");
                    (i, post_with_retries(&client, &url, &body, retries).await)
                });
            }
            let mut out: Vec<Option<Result<Value, Failure>>> = Vec::new();
            while let Some(joined) = set.join_next().await {
                let (i, r) = joined.unwrap_or_else(|e| {
                    (
                        usize::MAX,
                        Err(Failure {
                            message: format!("request task: {e}"),
                            retry: false,
                        }),
                    )
                });
                if i == usize::MAX {
                    out.push(Some(r));
                    continue;
                }
                if out.len() <= i {
                    out.resize_with(i + 1, || None);
                }
                out[i] = Some(r);
            }
            out.into_iter()
                .map(|r| {
                    r.unwrap_or_else(|| {
                        Err(Failure {
                            message: "no answer".into(),
                            retry: false,
                        })
                    })
                })
                .collect()
        })
    }

    fn completion_body(
        &self,
        prompt: Value,
        params: &SamplingParams,
        n: usize,
        seed: u64,
    ) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "prompt": prompt,
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p.unwrap_or(1.0),
            "max_tokens": params.max_new_tokens.max(1),
            "seed": seed,
            "logprobs": 1,
        });
        if !params.stop.is_empty() {
            body["stop"] = json!(params.stop);
        }
        // Not OpenAI's, but vLLM, llama-cpp-python and lmlab serve read them; sent so that the
        // server samples from the model's distribution as our samplers do (llama-cpp-python's
        // defaults are top_k 40, min_p 0.05 and a repetition penalty of 1.1).
        body["top_k"] = json!(params.top_k.unwrap_or(0));
        body["min_p"] = json!(0.0);
        body["repeat_penalty"] = json!(1.0);
        body
    }

    /// Prompt log-probabilities of `prompt_ids` + `response_ids` (ours, BOS first): the
    /// response's tokens as the server tokenized them.
    fn score_bodies(&self, seqs: &[Sequence], as_ids: bool) -> Vec<(Value, usize)> {
        let bos = self.tokenizer.encode("", true).first().copied();
        seqs.iter()
            .map(|s| {
                let prompt: Vec<u32> = match (bos, s.prompt.first()) {
                    (Some(b), Some(&f)) if b == f => s.prompt[1..].to_vec(),
                    _ => s.prompt.clone(),
                };
                // Offsets count characters (as OpenAI's `text_offset` does).
                let prompt_text = self.tokenizer.decode_with_special(&prompt, None);
                let boundary = prompt_text.chars().count();
                let body_prompt = if as_ids {
                    let mut all = prompt.clone();
                    all.extend(&s.response);
                    json!(all)
                } else {
                    let response_text = self
                        .tokenizer
                        .decode_with_special(&s.response, prompt.last().copied());
                    json!(format!("{prompt_text}{response_text}"))
                };
                let body = json!({
                    "model": self.config.model,
                    "prompt": body_prompt,
                    "echo": true,
                    "logprobs": 1,
                    "max_tokens": 1,
                    "temperature": 0.0,
                });
                (body, boundary)
            })
            .collect()
    }
}

async fn post_with_retries(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    retries: u32,
) -> Result<Value, Failure> {
    let mut wait = Duration::from_millis(500);
    let mut attempt = 0;
    loop {
        let r = post_once(client, url, body).await;
        match r {
            Err(f) if f.retry && attempt < retries => {
                attempt += 1;
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
}

async fn post_once(client: &reqwest::Client, url: &str, body: &Value) -> Result<Value, Failure> {
    let resp = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| Failure {
            message: format!("POST {url}: {e}"),
            retry: true,
        })?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| Failure {
        message: format!("POST {url}: reading the answer: {e}"),
        retry: true,
    })?;
    if !status.is_success() {
        let retry = status.as_u16() == 429 || status.is_server_error();
        let detail: String = text.chars().take(300).collect();
        return Err(Failure {
            message: format!("POST {url}: {status}: {detail}"),
            retry,
        });
    }
    serde_json::from_str(&text).map_err(|e| Failure {
        message: format!("POST {url}: the answer is not JSON ({e})"),
        retry: false,
    })
}

fn failure(f: Failure) -> anyhow::Error {
    anyhow::anyhow!("{}", f.message)
}

/// The `choices` of a completion answer.
fn choices(v: &Value) -> anyhow::Result<&Vec<Value>> {
    v["choices"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("the server's answer has no `choices`: {v}"))
}

impl OpenAiPolicy {
    /// One choice as a [`Completion`] of `prompt`.
    fn completion(&self, prompt: &[u32], c: &Value) -> Completion {
        let text = c["text"].as_str().unwrap_or("").to_string();
        let server_ids: Option<Vec<u32>> = c["token_ids"].as_array().map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64().map(|x| x as u32))
                .collect()
        });
        let logprobs: Vec<f32> = c["logprobs"]["token_logprobs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.as_f64().unwrap_or(f64::NAN) as f32)
                    .collect()
            })
            .unwrap_or_default();
        let token_ids = server_ids.unwrap_or_else(|| self.tokenizer.encode(&text, false));
        Completion {
            prompt: prompt.to_vec(),
            token_ids,
            text,
            logprobs,
            finished: c["finish_reason"].as_str() == Some("stop"),
        }
    }
}

impl Policy for OpenAiPolicy {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Unknown for a served model: 0 (FLOP counts are then not meaningful).
    fn num_params(&self) -> usize {
        0
    }

    fn generate(
        &self,
        prompts: &[String],
        params: &SamplingParams,
    ) -> anyhow::Result<Vec<Vec<Completion>>> {
        params.validate()?;
        let n = params.n.max(1);
        let encoded: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| self.tokenizer.encode(p, true))
            .collect();
        let mut out: Vec<Vec<Completion>> = vec![Vec::new(); prompts.len()];
        // Rounds: ask for what is missing (a server may give fewer than n choices).
        for round in 0..n as u64 {
            let todo: Vec<usize> = (0..prompts.len()).filter(|&i| out[i].len() < n).collect();
            if todo.is_empty() {
                break;
            }
            let bodies = todo
                .iter()
                .map(|&i| {
                    let want = n - out[i].len();
                    let seed = params.seed.wrapping_add(round * 1_000_003 + i as u64);
                    self.completion_body(json!(prompts[i]), params, want, seed)
                })
                .collect();
            for (&i, r) in todo.iter().zip(self.post_all("completions", bodies)) {
                let v = r.map_err(failure)?;
                let got = choices(&v)?;
                if got.is_empty() {
                    anyhow::bail!("the server returned no choices for prompt {i}");
                }
                for c in got.iter().take(n - out[i].len()) {
                    out[i].push(self.completion(&encoded[i], c));
                }
            }
        }
        Ok(out)
    }

    fn log_probs(&self, seqs: &[Sequence], temperature: f32) -> anyhow::Result<SequenceLogProbs> {
        if temperature > 0.0 && temperature != 1.0 {
            anyhow::bail!(
                "a served model scores at temperature 1 only (the API returns the model's own \
                 log-probabilities), not {temperature}"
            );
        }
        let as_ids = *self.ids_ok.get_or_init(|| {
            // Does the server take token ids as the prompt? One tiny probe.
            let probe = json!({"model": self.config.model, "prompt": [1, 2], "max_tokens": 1,
                               "echo": true, "logprobs": 1, "temperature": 0.0});
            matches!(self.post_all("completions", vec![probe]).pop(), Some(Ok(v))
                if choices(&v).is_ok_and(|c| !c.is_empty()))
        });
        let bodies = self.score_bodies(seqs, as_ids);
        let boundaries: Vec<usize> = bodies.iter().map(|(_, b)| *b).collect();
        let answers = self.post_all("completions", bodies.into_iter().map(|(b, _)| b).collect());
        let mut rows = Vec::with_capacity(seqs.len());
        for ((s, boundary), r) in seqs.iter().zip(boundaries).zip(answers) {
            let v = r.map_err(failure)?;
            let c = choices(&v)?
                .first()
                .ok_or_else(|| anyhow::anyhow!("the server returned no choices"))?;
            rows.push(response_logprobs(c, boundary, s)?);
        }
        Ok(SequenceLogProbs::from_host(&rows))
    }
}

/// The response's log-probabilities from an echoed choice: the tokens whose text offset is at
/// or after `boundary` (the prompt's length in characters), without the last (generated) one.
fn response_logprobs(c: &Value, boundary: usize, s: &Sequence) -> anyhow::Result<Vec<f32>> {
    let lp = &c["logprobs"];
    let (Some(tokens), Some(values), Some(offsets)) = (
        lp["tokens"].as_array(),
        lp["token_logprobs"].as_array(),
        lp["text_offset"].as_array(),
    ) else {
        anyhow::bail!(
            "the server returned no prompt log-probabilities (echo + logprobs); llama.cpp's own \
             llama-server does not serve them: use vLLM, llama-cpp-python's server or `lmlab serve`"
        );
    };
    if s.response.is_empty() {
        return Ok(Vec::new());
    }
    // Echo returns every prompt token plus the generated one; fewer means no echo.
    if tokens.len() < 2 || values.len() != tokens.len() || offsets.len() != tokens.len() {
        anyhow::bail!(
            "the server did not echo the prompt's tokens with their log-probabilities \
             ({} tokens, {} log-probabilities), so it cannot score prompts (llama.cpp's own \
             llama-server does not serve them: use vLLM, llama-cpp-python's server or `lmlab serve`)",
            tokens.len(),
            values.len()
        );
    }
    let last = tokens.len() - 1; // the generated token
    let mut out = Vec::new();
    for i in 0..last {
        let at = offsets[i].as_u64().unwrap_or(0) as usize;
        if at >= boundary {
            let v = values[i].as_f64().ok_or_else(|| {
                anyhow::anyhow!("the server gave no log-probability for response token {i}")
            })?;
            out.push(v as f32);
        }
    }
    if out.is_empty() {
        anyhow::bail!("no echoed token starts at or after the response (offset {boundary})");
    }
    Ok(out)
}

/// `[policy] use = "openai"`: what schedulers get is the served model itself (nothing is
/// trained through it).
struct OpenAiInit {
    config: OpenAiConfig,
    policy: std::sync::Mutex<Option<Arc<OpenAiPolicy>>>,
}

impl OpenAiInit {
    fn policy(&self) -> anyhow::Result<Arc<OpenAiPolicy>> {
        let mut slot = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(Arc::new(OpenAiPolicy::new(self.config.clone())?));
        }
        Ok(slot.clone().expect("made"))
    }
}

impl PolicyInit for OpenAiInit {
    fn tokenizer(&self, _texts: &mut dyn FnMut() -> Vec<String>) -> anyhow::Result<Tokenizer> {
        Ok(self.policy()?.tokenizer.clone())
    }

    fn init(
        &self,
        _tokenizer: &Tokenizer,
        _rng: &mut crate::rng::Rng,
        _device: &burn::tensor::Device,
    ) -> anyhow::Result<crate::lm::policy::LmPolicy> {
        anyhow::bail!("a served model (`openai`) cannot be trained in process")
    }

    fn trainable(&self) -> bool {
        false
    }

    fn inference(
        &self,
        _tokenizer: &Tokenizer,
        _device: &burn::tensor::Device,
    ) -> anyhow::Result<Box<dyn Policy>> {
        Ok(Box::new(self.policy()?))
    }

    fn describe(&self, _params: usize) -> String {
        format!("`{}` served at {}", self.config.model, self.config.base_url)
    }

    fn summary(&self, _tokenizer: &Tokenizer) -> anyhow::Result<String> {
        Ok(self.describe(0))
    }
}

crate::register_component! {
    kind: Policy,
    name: "openai",
    description: "a model behind an OpenAI-compatible server (/v1/completions: vLLM, SGLang, llama-cpp-python, lmlab serve), for sampling and scoring",
    config: OpenAiConfig,
    build: |config: OpenAiConfig, _ctx| {
        config.validate()?;
        Ok(Box::new(OpenAiInit { config, policy: std::sync::Mutex::new(None) }) as Box<dyn PolicyInit>)
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(response: usize) -> Sequence {
        Sequence::new(vec![1, 2], vec![3; response])
    }

    /// Echoed tokens are split at the response's text offset, the generated one dropped.
    #[test]
    fn response_tokens_are_found_by_offset() {
        let c = json!({"logprobs": {
            "tokens": ["The", " cat", " sat", " on", "!"],
            "text_offset": [0, 3, 7, 11, 14],
            "token_logprobs": [null, -1.5, -2.0, -0.5, -3.0]
        }});
        // Prompt "The cat" (7 bytes), response " sat on".
        assert_eq!(response_logprobs(&c, 7, &seq(2)).unwrap(), vec![-2.0, -0.5]);
        // No echo of the prompt: an error that says the server cannot score.
        let no_echo =
            json!({"logprobs": {"tokens": ["!"], "text_offset": [14], "token_logprobs": [-3.0]}});
        assert!(
            response_logprobs(&no_echo, 7, &seq(2))
                .unwrap_err()
                .to_string()
                .contains("cannot score")
        );
        let none = json!({"text": "x"});
        assert!(
            response_logprobs(&none, 7, &seq(2))
                .unwrap_err()
                .to_string()
                .contains("llama-server")
        );
    }
}
