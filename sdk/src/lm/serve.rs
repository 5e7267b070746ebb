//! `lmlab serve`: an OpenAI-compatible HTTP server (axum on tokio) for any checkpoint lmlab
//! loads, on the block-quantized CPU path with continuous batching ([`Engine`]).
//!
//! - `POST /v1/completions`: `prompt` as a string, token ids, or a list of either (one
//!   request each; choice `i·n + j` is prompt `i`'s `j`-th); `max_tokens` (default 16; 0
//!   with `echo` scores the prompt only), `temperature`, `top_p`, `top_k` (0 or −1: off), `n`,
//!   `stop`, `seed`, `logprobs` (0–20 alternatives), `echo`. Each choice also carries its
//!   `token_ids`. With `echo` + `logprobs` the prompt's tokens come back with their
//!   log-probabilities (prompt scoring, which llama.cpp's own server lacks); the BOS token the
//!   server adds is not echoed, so the echoed tokens are the prompt's own (what lm-eval's
//!   `local-completions` counts on).
//! - `POST /v1/chat/completions`: `messages` in the model's chat template; `max_tokens` /
//!   `max_completion_tokens`, the sampling fields above, `logprobs` + `top_logprobs`.
//! - `GET /v1/models`, `GET /health`.
//!
//! Requests are parsed field by field ([`parse_completion`], [`parse_chat`]): a field of the
//! wrong type or out of range is a 400 naming it, in OpenAI's error shape; unknown fields are
//! ignored, as OpenAI-compatible servers do; features not served (streaming, penalties,
//! `logit_bias`, `suffix`) are refused by name. Nothing a client sends can crash the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::lm::Tokenizer;
use crate::lm::engine::{Answer, Batcher, Engine, MAX_TOP_LOGPROBS, Request};
use crate::lm::quant::QKind;
use crate::policy::SamplingParams;

/// Largest request body (bytes).
pub const MAX_BODY: usize = 8 << 20;
/// Most prompts in one completions request.
pub const MAX_PROMPTS: usize = 256;

/// What `lmlab serve` is started with.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub model: PathBuf,
    pub tokenizer: Option<PathBuf>,
    /// `None`: a GGUF file's own blocks (other formats Q8_0); else every matrix in this kind.
    pub weights: Option<QKind>,
    /// The `model` name `/v1/models` lists.
    pub name: String,
    pub addr: SocketAddr,
    /// Most rows in one forward pass (prompt chunks are cut to fit).
    pub max_batch_rows: usize,
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub param: Option<String>,
}

impl ApiError {
    pub fn bad(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            param: param.into(),
        }
    }

    fn field(name: &str, message: impl std::fmt::Display) -> Self {
        Self::bad(Some(name.to_string()), format!("`{name}` {message}"))
    }

    pub fn body(&self) -> Value {
        let kind = match self.status {
            400..=499 => "invalid_request_error",
            _ => "server_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param,
                         "code": Value::Null}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        json_response(status, &self.body())
    }
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// One parsed completions call: an engine request per prompt, and how to answer.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletionCall {
    pub requests: Vec<Request>,
    /// Per request: whether the server put BOS first (then it is not echoed).
    pub bos_added: Vec<bool>,
    pub echo: bool,
    /// `logprobs`: `None` for no log-probabilities, else how many alternatives.
    pub logprobs: Option<usize>,
    pub model: Option<String>,
}

/// One parsed chat call.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatCall {
    pub request: Request,
    pub logprobs: Option<usize>,
    pub model: Option<String>,
}

fn object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad(None, format!("the body is not JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::bad(
            None,
            format!("the body must be a JSON object, not {}", kind_of(&other)),
        )),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The fields of a request object, each read once with its type checked.
struct Fields<'a>(&'a serde_json::Map<String, Value>);

impl Fields<'_> {
    /// The field, `None` when absent or null.
    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    fn number(&self, name: &str) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| ApiError::field(name, "must be a finite number")),
            Some(v) => Err(ApiError::field(
                name,
                format!("must be a number, not {}", kind_of(v)),
            )),
        }
    }

    fn integer(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) if (min..=max).contains(&i) => Ok(Some(i)),
                _ => Err(ApiError::field(
                    name,
                    format!("must be an integer in {min}..={max}"),
                )),
            },
            Some(v) => Err(ApiError::field(
                name,
                format!("must be an integer, not {}", kind_of(v)),
            )),
        }
    }

    fn boolean(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::field(
                name,
                format!("must be a boolean, not {}", kind_of(v)),
            )),
        }
    }

    fn string(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::field(
                name,
                format!("must be a string, not {}", kind_of(v)),
            )),
        }
    }

    /// Refuses a field unless it is absent or has the neutral value.
    fn neutral(&self, name: &str, neutral: f64, what: &str) -> Result<(), ApiError> {
        match self.number(name)? {
            Some(x) if x != neutral => Err(ApiError::field(
                name,
                format!("is not served ({what}); leave it out or send {neutral}"),
            )),
            _ => Ok(()),
        }
    }
}

/// The sampling fields both endpoints share; `max_tokens` is set by the caller.
fn sampling(f: &Fields, default_seed: u64) -> Result<SamplingParams, ApiError> {
    if f.boolean("stream")? == Some(true) {
        return Err(ApiError::field(
            "stream",
            "is not served: send stream: false",
        ));
    }
    f.neutral("frequency_penalty", 0.0, "penalties")?;
    f.neutral("presence_penalty", 0.0, "penalties")?;
    f.neutral("repeat_penalty", 1.0, "penalties")?;
    f.neutral("repetition_penalty", 1.0, "penalties")?;
    f.neutral("min_p", 0.0, "min-p sampling")?;
    if let Some(b) = f.get("logit_bias")
        && !b.as_object().is_some_and(|m| m.is_empty())
    {
        return Err(ApiError::field("logit_bias", "is not served"));
    }
    let temperature = f.number("temperature")?.unwrap_or(1.0);
    if !(0.0..=100.0).contains(&temperature) {
        return Err(ApiError::field(
            "temperature",
            "must be 0 (greedy) or positive",
        ));
    }
    let top_p = f.number("top_p")?.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::field("top_p", "must be in (0, 1]"));
    }
    let top_k = match f.integer("top_k", -1, i64::from(u32::MAX))? {
        None | Some(-1) | Some(0) => None,
        Some(k) => Some(k as usize),
    };
    let n = f.integer("n", 1, 128)?.unwrap_or(1) as usize;
    if let Some(best) = f.integer("best_of", 1, 128)?
        && best as usize != n
    {
        return Err(ApiError::field(
            "best_of",
            "is not served unless it equals n",
        ));
    }
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= 16 => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::field("stop", "must be a string or a list of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::field(
                "stop",
                "must be a string or up to 16 strings",
            ));
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::field("stop", "must not hold an empty string"));
    }
    let seed = match f.get("seed") {
        None => default_seed,
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|i| i as u64))
            .ok_or_else(|| ApiError::field("seed", "must be an integer"))?,
        Some(v) => {
            return Err(ApiError::field(
                "seed",
                format!("must be an integer, not {}", kind_of(v)),
            ));
        }
    };
    Ok(SamplingParams {
        temperature: temperature as f32,
        top_k,
        top_p: (top_p < 1.0).then_some(top_p as f32),
        max_new_tokens: 0,
        n,
        stop,
        seed,
    })
}

/// A prompt's token ids: text is encoded (BOS first when the tokenizer has one); ids get BOS
/// put first when the tokenizer has one and they do not start with it.
fn prompt_ids(
    v: &Value,
    tok: &Tokenizer,
    vocab: usize,
) -> Result<Option<(Vec<u32>, bool)>, ApiError> {
    let bos = tok.bos();
    match v {
        Value::String(s) => {
            let ids = tok.encode(s, true);
            let added = bos.is_some() && ids.first() == bos.as_ref();
            Ok(Some((ids, added)))
        }
        Value::Array(a) if a.iter().all(Value::is_number) && !a.is_empty() => {
            let mut ids = Vec::with_capacity(a.len() + 1);
            for x in a {
                match x.as_u64() {
                    Some(i) if (i as usize) < vocab => ids.push(i as u32),
                    _ => {
                        return Err(ApiError::field(
                            "prompt",
                            format!("holds {x}, not a token id below {vocab}"),
                        ));
                    }
                }
            }
            let added = match bos {
                Some(b) if ids.first() != Some(&b) => {
                    ids.insert(0, b);
                    true
                }
                _ => false,
            };
            Ok(Some((ids, added)))
        }
        _ => Ok(None),
    }
}

/// Parses a `/v1/completions` body (see the [module](self) docs).
pub fn parse_completion(
    body: &[u8],
    tok: &Tokenizer,
    max_seq_len: usize,
    default_seed: u64,
) -> Result<CompletionCall, ApiError> {
    let map = object(body)?;
    let f = Fields(&map);
    if f.get("suffix").is_some_and(|s| s.as_str() != Some("")) {
        return Err(ApiError::field("suffix", "is not served"));
    }
    let mut params = sampling(&f, default_seed)?;
    let max_tokens = f
        .integer("max_tokens", 0, i64::from(u32::MAX))?
        .unwrap_or(16) as usize;
    params.max_new_tokens = max_tokens.min(max_seq_len);
    let echo = f.boolean("echo")?.unwrap_or(false);
    let logprobs = f
        .integer("logprobs", 0, MAX_TOP_LOGPROBS as i64)?
        .map(|k| k as usize);
    let vocab = tok.vocab_size();
    let prompt = f
        .get("prompt")
        .ok_or_else(|| ApiError::field("prompt", "is required"))?;
    let mut prompts = Vec::new();
    match prompt_ids(prompt, tok, vocab)? {
        Some(p) => prompts.push(p),
        None => match prompt {
            Value::Array(items) if !items.is_empty() && items.len() <= MAX_PROMPTS => {
                for item in items {
                    match prompt_ids(item, tok, vocab)? {
                        Some(p) => prompts.push(p),
                        None => {
                            return Err(ApiError::field(
                                "prompt",
                                "must be a string, token ids, or a list of either",
                            ));
                        }
                    }
                }
            }
            Value::Array(items) if items.len() > MAX_PROMPTS => {
                return Err(ApiError::field(
                    "prompt",
                    format!("holds more than {MAX_PROMPTS} prompts"),
                ));
            }
            _ => {
                return Err(ApiError::field(
                    "prompt",
                    "must be a string, token ids, or a list of either",
                ));
            }
        },
    }
    let mut requests = Vec::with_capacity(prompts.len());
    let mut bos_added = Vec::with_capacity(prompts.len());
    for (ids, added) in prompts {
        if ids.is_empty() {
            return Err(ApiError::field(
                "prompt",
                "is empty, and this tokenizer adds no BOS token",
            ));
        }
        if ids.len() > max_seq_len {
            return Err(ApiError::field(
                "prompt",
                format!(
                    "has {} tokens; the model's context is {max_seq_len}",
                    ids.len()
                ),
            ));
        }
        requests.push(Request {
            prompt: ids,
            params: params.clone(),
            echo: echo && logprobs.is_some(),
            top_logprobs: logprobs.unwrap_or(0),
        });
        bos_added.push(added);
    }
    Ok(CompletionCall {
        requests,
        bos_added,
        echo,
        logprobs,
        model: f.string("model")?.map(str::to_string),
    })
}

/// Parses a `/v1/chat/completions` body; `template` is the model's chat template.
pub fn parse_chat(
    body: &[u8],
    tok: &Tokenizer,
    template: Option<&str>,
    max_seq_len: usize,
    default_seed: u64,
) -> Result<ChatCall, ApiError> {
    let map = object(body)?;
    let f = Fields(&map);
    let mut params = sampling(&f, default_seed)?;
    let Some(Value::Array(messages)) = f.get("messages") else {
        return Err(ApiError::field(
            "messages",
            "is required: a list of {role, content}",
        ));
    };
    if messages.is_empty() {
        return Err(ApiError::field("messages", "is empty"));
    }
    let mut turns = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"]
            .as_str()
            .ok_or_else(|| ApiError::field("messages", format!("[{i}] has no string `role`")))?;
        let content = match &m["content"] {
            Value::String(s) => s.clone(),
            // Content parts: the text ones, joined.
            Value::Array(parts) => {
                let mut text = String::new();
                for p in parts {
                    match (p["type"].as_str(), p["text"].as_str()) {
                        (Some("text"), Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::field(
                                "messages",
                                format!("[{i}] has a content part that is not text"),
                            ));
                        }
                    }
                }
                text
            }
            _ => {
                return Err(ApiError::field(
                    "messages",
                    format!("[{i}] has no string `content`"),
                ));
            }
        };
        turns.push((role.to_string(), content));
    }
    let template = template.ok_or_else(|| {
        ApiError::bad(None, "this model has no chat template: use /v1/completions")
    })?;
    let text = crate::lm::load::render_chat(template, &turns)
        .map_err(|e| ApiError::field("messages", e))?;
    let prompt = tok.encode(&text, true);
    if prompt.len() > max_seq_len {
        return Err(ApiError::field(
            "messages",
            format!(
                "make {} tokens; the model's context is {max_seq_len}",
                prompt.len()
            ),
        ));
    }
    let room = max_seq_len - prompt.len();
    let max = f
        .integer("max_completion_tokens", 0, i64::from(u32::MAX))?
        .or(f.integer("max_tokens", 0, i64::from(u32::MAX))?);
    params.max_new_tokens = max.map_or(room, |m| (m as usize).min(room));
    let logprobs = match f.boolean("logprobs")? {
        Some(true) => Some(
            f.integer("top_logprobs", 0, MAX_TOP_LOGPROBS as i64)?
                .unwrap_or(0) as usize,
        ),
        _ => None,
    };
    if prompt.is_empty() {
        return Err(ApiError::field("messages", "render to no tokens"));
    }
    Ok(ChatCall {
        request: Request {
            prompt,
            params,
            echo: false,
            top_logprobs: logprobs.unwrap_or(0),
        },
        logprobs,
        model: f.string("model")?.map(str::to_string),
    })
}

/// A token's text as the `tokens` and `top_logprobs` of a response show it.
fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.decode_with_special(&[id], None)
}

/// The character offset at which each of `ids` starts in `decode(ids)`, from `base`.
fn offsets(tok: &Tokenizer, ids: &[u32], base: usize, special: bool) -> Vec<usize> {
    (0..ids.len())
        .map(|i| {
            let prefix = if special {
                tok.decode_with_special(&ids[..i], None)
            } else {
                tok.decode(&ids[..i], None)
            };
            base + prefix.chars().count()
        })
        .collect()
}

/// The completion's text without the stop string that ended it (OpenAI's convention).
fn trim_stop(mut text: String, stop: &[String]) -> String {
    if let Some(s) = stop.iter().find(|s| text.ends_with(s.as_str())) {
        text.truncate(text.len() - s.len());
    }
    text
}

fn top_map(tok: &Tokenizer, top: &[(u32, f32)]) -> Value {
    let mut m = serde_json::Map::new();
    for &(id, lp) in top {
        m.entry(token_text(tok, id)).or_insert(json!(lp));
    }
    Value::Object(m)
}

/// The `/v1/completions` answer.
pub fn completion_response(
    call: &CompletionCall,
    answers: &[Answer],
    tok: &Tokenizer,
    model: &str,
    id: u64,
    created: u64,
) -> Value {
    let mut choices = Vec::new();
    let (mut prompt_tokens, mut completion_tokens) = (0usize, 0usize);
    for (ri, (req, answer)) in call.requests.iter().zip(answers).enumerate() {
        let skip = usize::from(call.bos_added[ri]);
        let shown = &req.prompt[skip..];
        prompt_tokens += req.prompt.len();
        let prompt_text = if call.echo {
            tok.decode_with_special(shown, None)
        } else {
            String::new()
        };
        for (j, c) in answer.choices.iter().enumerate() {
            completion_tokens += c.tokens.len();
            let generated = tok.decode(&c.tokens, req.prompt.last().copied());
            let text = format!("{prompt_text}{}", trim_stop(generated, &req.params.stop));
            let logprobs = call.logprobs.map(|_| {
                let mut tokens = Vec::new();
                let mut lps: Vec<Value> = Vec::new();
                let mut tops: Vec<Value> = Vec::new();
                let mut offs = Vec::new();
                if call.echo {
                    let base = offsets(tok, shown, 0, true);
                    for (i, &t) in shown.iter().enumerate() {
                        tokens.push(json!(token_text(tok, t)));
                        // Prompt position skip + i is scored by answer.prompt[skip + i − 1].
                        let at = (skip + i).checked_sub(1).and_then(|k| answer.prompt.get(k));
                        lps.push(at.map_or(Value::Null, |s| json!(s.logprob)));
                        tops.push(at.map_or(Value::Null, |s| top_map(tok, &s.top)));
                        offs.push(json!(base[i]));
                    }
                }
                let start = prompt_text.chars().count();
                for (&t, (s, o)) in c
                    .tokens
                    .iter()
                    .zip(c.scored.iter().zip(offsets(tok, &c.tokens, start, false)))
                {
                    tokens.push(json!(token_text(tok, t)));
                    lps.push(json!(s.logprob));
                    tops.push(top_map(tok, &s.top));
                    offs.push(json!(o));
                }
                json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops,
                       "text_offset": offs})
            });
            choices.push(json!({
                "index": ri * req.params.n.max(1) + j,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": c.finish.reason(),
                "token_ids": c.tokens,
            }));
        }
    }
    json!({
        "id": format!("cmpl-{id}"),
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })
}

/// The `/v1/chat/completions` answer.
pub fn chat_response(
    call: &ChatCall,
    answer: &Answer,
    tok: &Tokenizer,
    model: &str,
    id: u64,
    created: u64,
) -> Value {
    let req = &call.request;
    let mut completion_tokens = 0;
    let entry = |id: u32, lp: f32| {
        let text = token_text(tok, id);
        json!({"token": text, "logprob": lp, "bytes": text.as_bytes()})
    };
    let choices: Vec<Value> = answer
        .choices
        .iter()
        .enumerate()
        .map(|(j, c)| {
            completion_tokens += c.tokens.len();
            let content = trim_stop(tok.decode(&c.tokens, None), &req.params.stop);
            let logprobs = call.logprobs.map(|_| {
                let content: Vec<Value> = c
                    .tokens
                    .iter()
                    .zip(&c.scored)
                    .map(|(&t, s)| {
                        let mut e = entry(t, s.logprob);
                        e["top_logprobs"] = json!(
                            s.top
                                .iter()
                                .map(|&(i, lp)| entry(i, lp))
                                .collect::<Vec<_>>()
                        );
                        e
                    })
                    .collect();
                json!({"content": content})
            });
            json!({
                "index": j,
                "message": {"role": "assistant", "content": content},
                "logprobs": logprobs,
                "finish_reason": c.finish.reason(),
                "token_ids": c.tokens,
            })
        })
        .collect();
    json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": req.prompt.len(), "completion_tokens": completion_tokens,
                  "total_tokens": req.prompt.len() + completion_tokens},
    })
}

/// What the handlers share.
pub struct Served {
    pub engine: Engine,
    pub name: String,
    pub chat_template: Option<String>,
    created: u64,
    counter: AtomicU64,
}

impl Served {
    pub fn new(engine: Engine, name: String, chat_template: Option<String>) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            engine,
            name,
            chat_template,
            created,
            counter: AtomicU64::new(0),
        }
    }

    /// A request number; also the seed of a request that sends none.
    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed) ^ self.created.rotate_left(17)
    }

    async fn answer(&self, requests: Vec<Request>) -> Result<Vec<Answer>, ApiError> {
        let waiting: Vec<_> = requests
            .into_iter()
            .map(|r| self.engine.submit(r))
            .collect();
        let mut out = Vec::with_capacity(waiting.len());
        for w in waiting {
            let answer = w
                .await
                .map_err(|_| server_error("the engine stopped"))?
                .map_err(|e| ApiError::bad(None, e))?;
            out.push(answer);
        }
        Ok(out)
    }
}

fn server_error(message: &str) -> ApiError {
    ApiError {
        status: 500,
        message: message.into(),
        param: None,
    }
}

fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError {
        status: e.status().as_u16(),
        message: e.body_text(),
        param: None,
    })
}

async fn completions(
    State(s): State<Arc<Served>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_of(body)?;
    let id = s.next();
    let m = s.engine.model();
    let call = parse_completion(&body, s.engine.tokenizer(), m.config.max_seq_len, id)?;
    let answers = s.answer(call.requests.clone()).await?;
    let name = call.model.as_deref().unwrap_or(&s.name);
    let v = completion_response(&call, &answers, s.engine.tokenizer(), name, id, s.created);
    Ok(json_response(StatusCode::OK, &v))
}

async fn chat(
    State(s): State<Arc<Served>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_of(body)?;
    let id = s.next();
    let m = s.engine.model();
    let call = parse_chat(
        &body,
        s.engine.tokenizer(),
        s.chat_template.as_deref(),
        m.config.max_seq_len,
        id,
    )?;
    let answer = s.answer(vec![call.request.clone()]).await?.remove(0);
    let name = call.model.as_deref().unwrap_or(&s.name);
    let v = chat_response(&call, &answer, s.engine.tokenizer(), name, id, s.created);
    Ok(json_response(StatusCode::OK, &v))
}

async fn models(State(s): State<Arc<Served>>) -> Response {
    let c = &s.engine.model().config;
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{"id": s.name, "object": "model", "created": s.created,
                 "owned_by": "lmlab", "max_model_len": c.max_seq_len}]}),
    )
}

async fn not_found() -> ApiError {
    ApiError {
        status: 404,
        message: "no such route: the API has /v1/completions, /v1/chat/completions and /v1/models"
            .into(),
        param: None,
    }
}

/// The server's routes.
pub fn router(state: Arc<Served>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .fallback(not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Loads the model and serves until Ctrl-C (or SIGTERM). Prints `listening on URL` on stdout
/// once the socket is bound.
pub fn run(opts: ServeOptions) -> anyhow::Result<()> {
    let loaded =
        crate::lm::load::load_quantized(&opts.model, opts.tokenizer.as_deref(), opts.weights)?;
    let model = Arc::new(loaded.model);
    let batcher = Batcher::new(
        model,
        loaded.tokenizer,
        loaded.stop_ids,
        opts.max_batch_rows,
    );
    let served = Arc::new(Served::new(
        Engine::start(batcher),
        opts.name,
        loaded.chat_template,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {}: {e}", opts.addr))?;
        let addr = listener.local_addr()?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{addr}/v1")?;
            out.flush()?;
        }
        axum::serve(listener, router(served))
            .with_graceful_shutdown(shutdown())
            .await?;
        anyhow::Ok(())
    })
}

async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::tokenizer::CharTokenizer;

    fn tok() -> Tokenizer {
        Tokenizer::Char(CharTokenizer::new("abcdefgh"))
    }

    fn parse(body: &str) -> Result<CompletionCall, ApiError> {
        parse_completion(body.as_bytes(), &tok(), 32, 7)
    }

    #[test]
    fn completion_requests_parse_with_their_defaults() {
        let c = parse(r#"{"model": "m", "prompt": "abc"}"#).unwrap();
        assert_eq!(c.requests.len(), 1);
        let r = &c.requests[0];
        assert_eq!(r.prompt, vec![1, 4, 5, 6]);
        assert_eq!(
            (r.params.max_new_tokens, r.params.n, r.params.seed),
            (16, 1, 7)
        );
        assert_eq!(
            (r.params.temperature, r.params.top_p, r.params.top_k),
            (1.0, None, None)
        );
        assert!(!r.echo && c.logprobs.is_none() && c.bos_added == [true]);
        // Ids get BOS first unless they have it; lists of prompts are one request each.
        let c = parse(
            r#"{"prompt": [[4, 5], [1, 6]], "max_tokens": 0, "echo": true, "logprobs": 2,
                          "top_k": -1, "top_p": 0.5, "seed": 3, "stop": "x", "n": 2}"#,
        )
        .unwrap();
        assert_eq!(c.requests[0].prompt, vec![1, 4, 5]);
        assert_eq!(c.requests[1].prompt, vec![1, 6]);
        assert_eq!(c.bos_added, [true, false]);
        let r = &c.requests[1];
        assert!(r.echo && r.top_logprobs == 2 && r.params.max_new_tokens == 0);
        assert_eq!(
            (r.params.top_p, r.params.seed, r.params.n),
            (Some(0.5), 3, 2)
        );
        assert_eq!(r.params.stop, vec!["x".to_string()]);
        // max_tokens is bounded by the context.
        assert_eq!(
            parse(r#"{"prompt": "a", "max_tokens": 1000}"#)
                .unwrap()
                .requests[0]
                .params
                .max_new_tokens,
            32
        );
    }

    #[test]
    fn bad_requests_name_their_field() {
        for (body, param) in [
            ("{", None),
            ("[1]", None),
            (r#"{}"#, Some("prompt")),
            (r#"{"prompt": 3}"#, Some("prompt")),
            (r#"{"prompt": [1, 99]}"#, Some("prompt")),
            (r#"{"prompt": [1, -2]}"#, Some("prompt")),
            (r#"{"prompt": []}"#, Some("prompt")),
            (r#"{"prompt": "a", "temperature": -1}"#, Some("temperature")),
            (
                r#"{"prompt": "a", "temperature": "hot"}"#,
                Some("temperature"),
            ),
            (r#"{"prompt": "a", "top_p": 0}"#, Some("top_p")),
            (r#"{"prompt": "a", "n": 0}"#, Some("n")),
            (r#"{"prompt": "a", "max_tokens": -1}"#, Some("max_tokens")),
            (r#"{"prompt": "a", "logprobs": 21}"#, Some("logprobs")),
            (r#"{"prompt": "a", "stream": true}"#, Some("stream")),
            (
                r#"{"prompt": "a", "presence_penalty": 0.5}"#,
                Some("presence_penalty"),
            ),
            (r#"{"prompt": "a", "stop": [1]}"#, Some("stop")),
            (r#"{"prompt": "a", "echo": "yes"}"#, Some("echo")),
            (
                r#"{"prompt": "a", "logit_bias": {"1": 3}}"#,
                Some("logit_bias"),
            ),
            (
                r#"{"prompt": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#,
                Some("prompt"),
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
            assert_eq!(e.body()["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn chat_requests_use_the_template() {
        let template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}";
        let t = Tokenizer::Char(CharTokenizer::new("abcdefgh<>usrt"));
        let body = r#"{"messages": [{"role": "user", "content": "ab"}], "max_tokens": 3, "temperature": 0}"#;
        let c = parse_chat(body.as_bytes(), &t, Some(template), 64, 0).unwrap();
        assert_eq!(c.request.prompt, t.encode("<user>ab", true));
        assert_eq!(c.request.params.max_new_tokens, 3);
        let e = parse_chat(body.as_bytes(), &t, None, 64, 0).unwrap_err();
        assert!(e.message.contains("chat template"));
        let e = parse_chat(
            br#"{"messages": [{"content": "x"}]}"#,
            &t,
            Some(template),
            64,
            0,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages"));
        // Without max_tokens a chat answer may fill the context.
        let body =
            r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "ab"}]}]}"#;
        let c = parse_chat(body.as_bytes(), &t, Some(template), 64, 0).unwrap();
        assert_eq!(c.request.params.max_new_tokens, 64 - c.request.prompt.len());
    }

    #[test]
    fn the_stop_string_is_cut_from_the_text() {
        assert_eq!(trim_stop("abcX".into(), &["X".into()]), "abc");
        assert_eq!(trim_stop("abc".into(), &["X".into()]), "abc");
    }
}
