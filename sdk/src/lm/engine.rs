//! Continuous batching on the block-quantized CPU model ([`QLlama`]): what `lmlab serve` runs.
//!
//! A [`Batcher`] holds the requests in progress. Each [`step`](Batcher::step) is one
//! [`QLlama::forward_batch`] over a row per decoding sequence plus a chunk of each waiting
//! prompt, so concurrent requests share every matrix–matrix product; a request that arrives
//! while others decode joins at the next step. A request's `n` choices share its prompt's
//! prefill (the cache is copied when the prompt is in). Per row the arithmetic is
//! [`QSession::feed`](crate::lm::quant::QSession::feed)'s, so a request's tokens do not
//! depend on what else is in the batch.
//!
//! [`Engine`] runs a batcher on a thread of its own and takes requests from any thread or task.
//!
//! Log-probabilities: a prompt token's is the model's own (`log softmax(logits)`), a generated
//! token's is taken at the request's temperature (temperature 1 when greedy), as lmlab's
//! samplers report it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::mpsc;

use crate::lm::Tokenizer;
use crate::lm::quant::{QCache, QLlama};
use crate::lm::sample::{log_normalizer, logprob_at, sample_next};
use crate::policy::SamplingParams;
use crate::rng::{Rng, rng};

/// Most alternatives a request may ask for per position (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One request: `params.n` continuations of `prompt` (ids, BOS included when wanted).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub prompt: Vec<u32>,
    /// Temperature, top-k, top-p, `max_new_tokens`, `n`, stop strings and the seed.
    pub params: SamplingParams,
    /// Also score the prompt: each prompt token's log-probability after the ones before it.
    pub echo: bool,
    /// The `k` most likely tokens at each scored position (0 ≤ k ≤ [`MAX_TOP_LOGPROBS`]).
    pub top_logprobs: usize,
}

/// Why a choice ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// A stop token or stop string.
    Stop,
    /// `max_new_tokens` or the context length.
    Length,
}

impl Finish {
    /// OpenAI's `finish_reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// A scored position: the token's log-probability and the `k` most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// One continuation.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    /// Generated ids (a stop token included when one ended it).
    pub tokens: Vec<u32>,
    /// One per generated token.
    pub scored: Vec<Scored>,
    pub finish: Finish,
}

/// What a request gets back.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// With `echo`: one per prompt token after the first (the first has no context).
    pub prompt: Vec<Scored>,
    pub choices: Vec<Choice>,
}

/// A request's prompt being fed, then its choices decoding.
struct Group {
    id: u64,
    request: Request,
    /// The prompt's cache while it is fed.
    cache: QCache,
    fed: usize,
    prompt_scored: Vec<Scored>,
    seqs: Vec<Seq>,
}

struct Seq {
    cache: QCache,
    choice: Choice,
    done: bool,
    rng: Rng,
}

/// Requests in progress (see the [module](self) docs).
pub struct Batcher {
    model: Arc<QLlama>,
    tokenizer: Tokenizer,
    stop_ids: Vec<u32>,
    /// Most rows per step (prompt chunks are cut to fit; each decoding sequence takes one).
    max_rows: usize,
    groups: VecDeque<Group>,
    next_id: u64,
    /// Least prompt tokens that consecutive requests of [`run_all`](Self::run_all) must share
    /// for their common prefix to be fed once ([`SHARED_PREFIX_MIN`] by default).
    pub share_prefix: usize,
}

/// The default [`Batcher::share_prefix`]: few-shot prompts share hundreds of tokens.
pub const SHARED_PREFIX_MIN: usize = 32;

/// Where a row's logits go.
#[derive(Clone, Copy)]
enum RowUse {
    /// Group `g`'s prompt position `p` (the logits predict position `p + 1`).
    Prompt { g: usize, p: usize },
    /// Sequence `s` of group `g`.
    Decode { g: usize, s: usize },
}

impl Batcher {
    pub fn new(
        model: Arc<QLlama>,
        tokenizer: Tokenizer,
        stop_ids: Vec<u32>,
        max_rows: usize,
    ) -> Self {
        Self {
            model,
            tokenizer,
            stop_ids,
            max_rows: max_rows.max(1),
            groups: VecDeque::new(),
            next_id: 0,
            share_prefix: SHARED_PREFIX_MIN,
        }
    }

    pub fn model(&self) -> &QLlama {
        &self.model
    }

    /// Checks a request against the model; `Err` names what is wrong (a client's error).
    pub fn check(&self, r: &Request) -> Result<(), String> {
        let c = &self.model.config;
        r.params.validate().map_err(|e| e.to_string())?;
        if r.prompt.is_empty() {
            return Err("the prompt is empty (and the tokenizer adds no BOS token)".into());
        }
        if r.prompt.len() > c.max_seq_len {
            return Err(format!(
                "the prompt has {} tokens; the model's context is {}",
                r.prompt.len(),
                c.max_seq_len
            ));
        }
        if let Some(&bad) = r.prompt.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            ));
        }
        if r.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(format!(
                "logprobs is {}; at most {MAX_TOP_LOGPROBS}",
                r.top_logprobs
            ));
        }
        if r.params.n > 128 {
            return Err(format!("n is {}; at most 128", r.params.n));
        }
        Ok(())
    }

    /// Queues a request; its id comes back with its answer from [`step`](Self::step).
    pub fn add(&mut self, request: Request) -> Result<u64, String> {
        self.check(&request)?;
        let id = self.next_id;
        self.next_id += 1;
        self.groups.push_back(Group {
            id,
            cache: self.model.cache(),
            fed: 0,
            prompt_scored: Vec::new(),
            seqs: Vec::new(),
            request,
        });
        Ok(id)
    }

    /// Queues a request whose prompt's first `cache.len()` tokens are already in `cache` (a
    /// prefix it shares with others, fed once): feeding starts after them. Not for `echo`
    /// (the prefix's scores are not kept); the prefix must leave at least one prompt token.
    pub fn add_from(&mut self, request: Request, cache: QCache) -> Result<u64, String> {
        self.check(&request)?;
        if request.echo || cache.len() >= request.prompt.len() {
            return Err("a shared prefix needs a request without echo and a longer prompt".into());
        }
        let id = self.next_id;
        self.next_id += 1;
        self.groups.push_back(Group {
            id,
            fed: cache.len(),
            cache,
            prompt_scored: Vec::new(),
            seqs: Vec::new(),
            request,
        });
        Ok(id)
    }

    /// Per request of `requests`, the cache of the prefix it shares with its neighbours, when
    /// it does: runs of consecutive valid requests without echo whose prompts share at least
    /// [`share_prefix`](Self::share_prefix) tokens (a run ends where its shared prefix would
    /// halve), each run's prefix fed once. The prefix stops before every prompt's last token.
    fn shared_prefixes(&self, requests: &[Request]) -> Vec<Option<Arc<QCache>>> {
        let n = requests.len();
        let mut out: Vec<Option<Arc<QCache>>> = vec![None; n];
        let ok = |r: &Request| !r.echo && self.check(r).is_ok() && r.prompt.len() > 1;
        let mut i = 0;
        while i < n {
            if !ok(&requests[i]) {
                i += 1;
                continue;
            }
            let first = &requests[i].prompt;
            let (mut end, mut shared) = (i + 1, first.len() - 1);
            while end < n && ok(&requests[end]) {
                let other = &requests[end].prompt;
                let common = first
                    .iter()
                    .zip(other)
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(other.len() - 1);
                if common < self.share_prefix || common * 2 < shared {
                    break;
                }
                shared = shared.min(common);
                end += 1;
            }
            if end - i >= 2 && shared >= self.share_prefix {
                let mut cache = self.model.cache();
                let rows: Vec<(usize, u32)> = first[..shared].iter().map(|&t| (0, t)).collect();
                let fed = self.model.forward_batch(
                    std::slice::from_mut(&mut cache),
                    &rows,
                    &[],
                    &mut |_, _| {},
                );
                if fed.is_ok() {
                    let cache = Arc::new(cache);
                    for o in &mut out[i..end] {
                        *o = Some(cache.clone());
                    }
                }
            }
            i = end;
        }
        out
    }

    pub fn is_idle(&self) -> bool {
        self.groups.is_empty()
    }

    /// Requests in progress.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// One forward pass over every decoding sequence and as much waiting prompt as fits;
    /// returns the requests that finished, with their answers.
    pub fn step(&mut self) -> Vec<(u64, Result<Answer, String>)> {
        let mut done = Vec::new();
        // Requests that need no forward pass at all.
        self.groups.retain(|g| {
            let r = &g.request;
            let nothing = r.params.max_new_tokens == 0 && (!r.echo || r.prompt.len() < 2);
            if nothing {
                let choice = Choice {
                    tokens: Vec::new(),
                    scored: Vec::new(),
                    finish: Finish::Length,
                };
                done.push((
                    g.id,
                    Ok(Answer {
                        prompt: Vec::new(),
                        choices: vec![choice; r.params.n.max(1)],
                    }),
                ));
            }
            !nothing
        });
        let mut caches: Vec<QCache> = Vec::new();
        let mut rows: Vec<(usize, u32)> = Vec::new();
        let mut uses: Vec<Option<RowUse>> = Vec::new();
        // Decoding rows first (one each), then prompt chunks in arrival order.
        let mut owners: Vec<(usize, Option<usize>)> = Vec::new(); // (group, seq) per cache
        for (gi, g) in self.groups.iter_mut().enumerate() {
            for (si, s) in g.seqs.iter_mut().enumerate() {
                if s.done {
                    continue;
                }
                let last = *s
                    .choice
                    .tokens
                    .last()
                    .expect("a first token is sampled at prefill");
                rows.push((caches.len(), last));
                uses.push(Some(RowUse::Decode { g: gi, s: si }));
                owners.push((gi, Some(si)));
                caches.push(std::mem::take(&mut s.cache));
            }
        }
        for (gi, g) in self.groups.iter_mut().enumerate() {
            let left = self.max_rows.saturating_sub(rows.len());
            let prompt = &g.request.prompt;
            if !g.seqs.is_empty() || g.fed == prompt.len() || left == 0 {
                continue;
            }
            let generate = g.request.params.max_new_tokens > 0;
            let take = (prompt.len() - g.fed).min(left);
            let ci = caches.len();
            for p in g.fed..g.fed + take {
                let last = p + 1 == prompt.len();
                let wanted = (g.request.echo && !last) || (last && generate);
                rows.push((ci, prompt[p]));
                uses.push(wanted.then_some(RowUse::Prompt { g: gi, p }));
            }
            g.fed += take;
            owners.push((gi, None));
            caches.push(std::mem::take(&mut g.cache));
        }
        if rows.is_empty() {
            return done;
        }
        let wanted: Vec<usize> = (0..rows.len()).filter(|&r| uses[r].is_some()).collect();
        let mut failed: Option<String> = None;
        {
            let groups = &mut self.groups;
            let (tokenizer, stop_ids) = (&self.tokenizer, &self.stop_ids);
            let max_seq_len = self.model.config.max_seq_len;
            // Sampling from a prompt's last logits forks the prompt's cache: done after the
            // pass, from the logits kept here.
            let mut forks: Vec<(usize, Vec<f32>)> = Vec::new();
            let r =
                self.model.forward_batch(
                    &mut caches,
                    &rows,
                    &wanted,
                    &mut |row, logits| match uses[row].expect("wanted") {
                        RowUse::Prompt { g, p } => {
                            let group = &mut groups[g];
                            let prompt = &group.request.prompt;
                            if p + 1 < prompt.len() {
                                let k = group.request.top_logprobs;
                                group
                                    .prompt_scored
                                    .push(scored(logits, prompt[p + 1], 1.0, k));
                            } else {
                                forks.push((g, logits.to_vec()));
                            }
                        }
                        RowUse::Decode { g, s } => {
                            let group = &mut groups[g];
                            let (params, k) = (&group.request.params, group.request.top_logprobs);
                            let seq = &mut group.seqs[s];
                            let position = group.request.prompt.len() + seq.choice.tokens.len();
                            advance(
                                seq,
                                logits,
                                params,
                                k,
                                tokenizer,
                                stop_ids,
                                position,
                                max_seq_len,
                            );
                        }
                    },
                );
            if let Err(e) = r {
                failed = Some(e);
            }
            // Caches back to their owners.
            for ((gi, si), cache) in owners.into_iter().zip(caches) {
                match si {
                    Some(si) => groups[gi].seqs[si].cache = cache,
                    None => groups[gi].cache = cache,
                }
            }
            for (gi, logits) in forks {
                let g = &mut groups[gi];
                let (params, k) = (g.request.params.clone(), g.request.top_logprobs);
                let position = g.request.prompt.len();
                for i in 0..params.n.max(1) {
                    let mut seq = Seq {
                        cache: g.cache.clone(),
                        choice: Choice {
                            tokens: Vec::new(),
                            scored: Vec::new(),
                            finish: Finish::Length,
                        },
                        done: false,
                        rng: rng(params.seed, i as u64),
                    };
                    advance(
                        &mut seq,
                        &logits,
                        &params,
                        k,
                        tokenizer,
                        stop_ids,
                        position,
                        max_seq_len,
                    );
                    g.seqs.push(seq);
                }
                g.cache = QCache::default();
            }
        }
        if let Some(e) = failed {
            // Not a client's error (requests are checked when added): every request in the
            // pass fails rather than continuing from a half-written cache.
            for g in self.groups.drain(..) {
                done.push((g.id, Err(format!("the forward pass failed: {e}"))));
            }
            return done;
        }
        // Finished requests: prompt fed and every choice done (or nothing to generate).
        let mut i = 0;
        while i < self.groups.len() {
            let g = &self.groups[i];
            let fed = g.fed == g.request.prompt.len();
            let finished = fed
                && if g.request.params.max_new_tokens == 0 {
                    true
                } else {
                    !g.seqs.is_empty() && g.seqs.iter().all(|s| s.done)
                };
            if finished {
                let g = self.groups.remove(i).expect("in range");
                let choices = if g.seqs.is_empty() {
                    vec![
                        Choice {
                            tokens: Vec::new(),
                            scored: Vec::new(),
                            finish: Finish::Length,
                        };
                        g.request.params.n.max(1)
                    ]
                } else {
                    g.seqs.into_iter().map(|s| s.choice).collect()
                };
                done.push((
                    g.id,
                    Ok(Answer {
                        prompt: g.prompt_scored,
                        choices,
                    }),
                ));
            } else {
                i += 1;
            }
        }
        done
    }

    /// Runs `requests` to completion together; answers in request order. Consecutive requests
    /// that share a long prompt prefix (few-shot prompts) feed it once
    /// ([`share_prefix`](Self::share_prefix)); per row the arithmetic is the same, so the
    /// answers are those of feeding each prompt whole.
    pub fn run_all(&mut self, requests: Vec<Request>) -> Vec<Result<Answer, String>> {
        let mut ids = Vec::with_capacity(requests.len());
        let mut out: Vec<Option<Result<Answer, String>>> = vec![None; requests.len()];
        let prefixes = self.shared_prefixes(&requests);
        for (i, (r, prefix)) in requests.into_iter().zip(prefixes).enumerate() {
            let added = match prefix {
                Some(cache) => self.add_from(r, (*cache).clone()),
                None => self.add(r),
            };
            match added {
                Ok(id) => ids.push((id, i)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        while !self.is_idle() {
            for (id, answer) in self.step() {
                if let Some(&(_, i)) = ids.iter().find(|(x, _)| *x == id) {
                    out[i] = Some(answer);
                }
            }
        }
        out.into_iter()
            .map(|a| a.unwrap_or_else(|| Err("no answer".into())))
            .collect()
    }
}

/// Samples a sequence's next token from `logits` (the prediction for `position`) and records
/// it; marks the sequence done on a stop token, a stop string, `max_new_tokens` or the
/// context's end.
#[allow(clippy::too_many_arguments)]
fn advance(
    seq: &mut Seq,
    logits: &[f32],
    params: &SamplingParams,
    k: usize,
    tokenizer: &Tokenizer,
    stop_ids: &[u32],
    position: usize,
    max_seq_len: usize,
) {
    if position >= max_seq_len {
        // A prompt that fills the context: nothing more fits.
        seq.done = true;
        return;
    }
    let tok = sample_next(logits, params, &mut seq.rng) as u32;
    seq.choice
        .scored
        .push(scored(logits, tok, params.temperature, k));
    seq.choice.tokens.push(tok);
    if stop_ids.contains(&tok)
        || crate::policy::ends_with_stop(tokenizer, params, &seq.choice.tokens)
    {
        seq.choice.finish = Finish::Stop;
        seq.done = true;
    } else if seq.choice.tokens.len() >= params.max_new_tokens || position + 1 >= max_seq_len {
        // The next token would not fit in the context.
        seq.choice.finish = Finish::Length;
        seq.done = true;
    }
}

/// `token`'s log-probability at temperature `t` (≤ 0: 1) and the `k` most likely tokens'.
fn scored(logits: &[f32], token: u32, t: f32, k: usize) -> Scored {
    let logprob = logprob_at(logits, t, token as usize);
    let top = if k == 0 {
        Vec::new()
    } else {
        let (t, lse) = log_normalizer(logits, t);
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let k = k.min(idx.len());
        let by = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        idx.select_nth_unstable_by(k - 1, by);
        idx.truncate(k);
        idx.sort_by(by);
        idx.into_iter()
            .map(|i| (i, (logits[i as usize] as f64 / t - lse) as f32))
            .collect()
    };
    Scored { logprob, top }
}

/// A [`Batcher`] on a thread of its own: requests from any thread, answers on a channel each.
/// Dropping the engine stops the thread once the requests in progress are answered.
pub struct Engine {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    model: Arc<QLlama>,
    tokenizer: Tokenizer,
}

type Reply = tokio::sync::oneshot::Sender<Result<Answer, String>>;

struct Job {
    request: Request,
    reply: Reply,
}

impl Engine {
    pub fn start(batcher: Batcher) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let (model, tokenizer) = (batcher.model.clone(), batcher.tokenizer.clone());
        let thread = std::thread::Builder::new()
            .name("lmlab-engine".into())
            .spawn(move || serve_jobs(batcher, rx))
            .expect("spawning the engine thread");
        Self {
            tx: Some(tx),
            thread: Some(thread),
            model,
            tokenizer,
        }
    }

    pub fn model(&self) -> &QLlama {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Queues `request`; the answer arrives on the returned channel.
    pub fn submit(
        &self,
        request: Request,
    ) -> tokio::sync::oneshot::Receiver<Result<Answer, String>> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let job = Job { request, reply };
        if let Some(tx) = &self.tx
            && let Err(mpsc::SendError(job)) = tx.send(job)
        {
            let _ = job.reply.send(Err("the engine has stopped".into()));
        }
        rx
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_jobs(mut batcher: Batcher, rx: mpsc::Receiver<Job>) {
    let mut waiting: Vec<(u64, Reply)> = Vec::new();
    let mut open = true;
    loop {
        // Idle: wait for work. Busy: take whatever has arrived and step.
        let mut incoming = Vec::new();
        if batcher.is_idle() {
            if !open {
                return;
            }
            match rx.recv() {
                Ok(job) => incoming.push(job),
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(job) => incoming.push(job),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        for job in incoming {
            match batcher.add(job.request) {
                Ok(id) => waiting.push((id, job.reply)),
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        // A client that went away gets nothing; its request still runs to the end (the
        // batch it shares is not disturbed).
        let answers = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batcher.step()));
        match answers {
            Ok(answers) => {
                for (id, answer) in answers {
                    if let Some(i) = waiting.iter().position(|(x, _)| *x == id) {
                        let (_, reply) = waiting.swap_remove(i);
                        let _ = reply.send(answer);
                    }
                }
            }
            Err(_) => {
                // A bug, not a client's error: fail what is in progress and go on serving.
                batcher.groups.clear();
                for (_, reply) in waiting.drain(..) {
                    let _ = reply.send(Err("internal error while decoding".into()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::quant::QKind;
    use crate::lm::tokenizer::CharTokenizer;

    fn batcher(max_rows: usize) -> Batcher {
        let config = crate::lm::llama::LlamaConfig {
            vocab_size: 12,
            dim: 16,
            n_layers: 2,
            n_heads: 2,
            n_kv_heads: 1,
            hidden_dim: 32,
            max_seq_len: 24,
            rope_theta: 10_000.0,
            norm_eps: 1e-5,
            tie_embeddings: true,
            value_head: false,
            arch: Default::default(),
        };
        let device = burn::tensor::Device::flex();
        let model = crate::lm::Llama::init(config.clone(), &mut rng(3, 0), &device).unwrap();
        let q = QLlama::from_weights(config, model.to_weights(), QKind::Q8_0);
        Batcher::new(
            Arc::new(q),
            Tokenizer::Char(CharTokenizer::new("abcdefgh")),
            vec![2],
            max_rows,
        )
    }

    fn request(prompt: &[u32], t: f32, n: usize, max: usize, echo: bool) -> Request {
        Request {
            prompt: prompt.to_vec(),
            params: SamplingParams {
                temperature: t,
                n,
                max_new_tokens: max,
                seed: 5,
                ..Default::default()
            },
            echo,
            top_logprobs: 3,
        }
    }

    /// Requests answered together, in small prompt chunks, get what each gets alone; greedy
    /// choices equal the single-stream decoder's; echoed prompt log-probabilities equal
    /// `QLlama::score`'s.
    #[test]
    fn a_request_does_not_depend_on_its_batch() {
        let reqs = vec![
            request(&[1, 4, 5, 6], 0.0, 1, 8, true),
            request(&[1, 7], 0.9, 3, 6, false),
            request(&[1, 9, 9, 9, 9, 9, 8], 0.0, 2, 30, true),
            request(&[1, 4, 5], 1.3, 1, 0, true),
        ];
        let alone: Vec<_> = reqs
            .iter()
            .map(|r| batcher(64).run_all(vec![r.clone()]).remove(0).unwrap())
            .collect();
        for max_rows in [1, 3, 64] {
            let together = batcher(max_rows).run_all(reqs.clone());
            for (a, b) in alone.iter().zip(&together) {
                assert_eq!(a, b.as_ref().unwrap(), "max_rows {max_rows}");
            }
        }
        let b = batcher(64);
        let m = b.model();
        // Greedy: the single-stream decoder's tokens.
        let want = m.generate(&reqs[0].prompt, &reqs[0].params, &[2], &mut rng(0, 0));
        assert_eq!(alone[0].choices[0].tokens, want.tokens);
        assert_eq!(
            alone[2].choices[0], alone[2].choices[1],
            "greedy choices agree"
        );
        // The context bounds a long request: 7 prompt tokens + at most 17 new ones.
        let c = &alone[2].choices[0];
        assert!(
            c.finish == Finish::Stop || c.tokens.len() == 24 - 7,
            "{c:?}"
        );
        // Echo: the prompt's scores, with top alternatives in descending order that include the
        // most likely token.
        for (r, a) in reqs.iter().zip(&alone).filter(|(r, _)| r.echo) {
            let want = m.score(&r.prompt, 1, 1.0).unwrap();
            let got: Vec<f32> = a.prompt.iter().map(|s| s.logprob).collect();
            assert_eq!(got, want);
            for s in &a.prompt {
                assert_eq!(s.top.len(), 3);
                assert!(s.top.windows(2).all(|w| w[0].1 >= w[1].1));
                assert!(s.top[0].1 >= s.logprob);
            }
        }
        assert!(alone[3].choices[0].tokens.is_empty());
        // Sampled choices differ from one another (3 draws of 6 tokens at T = 0.9).
        let c = &alone[1].choices;
        assert!(c[0].tokens != c[1].tokens || c[1].tokens != c[2].tokens);
    }

    /// Requests sharing a prompt prefix feed it once and get what each gets fed whole; a
    /// request with echo, or one sharing too little, is fed whole.
    #[test]
    fn a_shared_prefix_is_fed_once_with_the_same_answers() {
        let p = [1, 4, 5, 6, 7, 3];
        let reqs = vec![
            request(&[&p[..], &[8, 9]].concat(), 0.0, 1, 6, false),
            request(&[&p[..], &[9]].concat(), 0.9, 2, 6, false),
            request(&p, 0.0, 1, 6, false),
            request(&[&p[..], &[8]].concat(), 0.0, 1, 6, true),
            request(&[1, 4, 9], 0.0, 1, 6, false),
        ];
        let mut b = batcher(64);
        b.share_prefix = 3;
        let prefixes = b.shared_prefixes(&reqs);
        let lens: Vec<Option<usize>> = prefixes
            .iter()
            .map(|c| c.as_ref().map(|c| c.len()))
            .collect();
        // The first three share 6 tokens, less the last prompt token of the third.
        assert_eq!(lens, [Some(5), Some(5), Some(5), None, None]);
        let shared = b.run_all(reqs.clone());
        let whole = batcher(64).run_all(reqs.clone());
        for (i, (a, w)) in shared.iter().zip(&whole).enumerate() {
            assert_eq!(a.as_ref().unwrap(), w.as_ref().unwrap(), "request {i}");
        }
        let mut b = batcher(64);
        assert!(b.add_from(reqs[3].clone(), b.model().cache()).is_err());
    }

    #[test]
    fn bad_requests_are_refused_when_added() {
        let mut b = batcher(8);
        assert!(
            b.add(request(&[], 0.0, 1, 4, false))
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            b.add(request(&[1, 99], 0.0, 1, 4, false))
                .unwrap_err()
                .contains("vocabulary")
        );
        assert!(
            b.add(request(&[1; 25], 0.0, 1, 4, false))
                .unwrap_err()
                .contains("context")
        );
        assert!(
            b.add(request(&[1], -1.0, 1, 4, false))
                .unwrap_err()
                .contains("temperature")
        );
        let mut r = request(&[1], 0.0, 1, 4, false);
        r.top_logprobs = 21;
        assert!(b.add(r).unwrap_err().contains("logprobs"));
        assert!(b.is_idle());
    }

    /// The engine's thread answers requests sent from several threads at once.
    #[test]
    fn the_engine_answers_concurrent_requests() {
        let reqs: Vec<Request> = (0..6)
            .map(|i| request(&[1, 4 + i as u32 % 5], 0.0, 1, 5, false))
            .collect();
        let want = batcher(64).run_all(reqs.clone());
        let engine = Engine::start(batcher(64));
        let got: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = reqs
                .iter()
                .map(|r| {
                    let e = &engine;
                    s.spawn(move || e.submit(r.clone()).blocking_recv().unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(got, want);
        assert!(
            engine
                .submit(request(&[], 0.0, 1, 1, false))
                .blocking_recv()
                .unwrap()
                .is_err()
        );
    }
}
