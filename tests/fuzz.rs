//! Fuzzing what lmlab reads from outside: checkpoint files (GGUF, llama2.c `.bin` and its
//! tokenizer, safetensors + `config.json`), `tokenizer.json`, and `lmlab serve`'s requests.
//!
//! Each harness mutates real files — written by lmlab's own exporters, which
//! `transformers` and llama.cpp load (tests/export.rs), and the real `tok512.bin` of
//! stories260K — and real requests, and runs each input through the same path a user's file
//! or a client's request takes. It fails on any panic, on any input slower than
//! [`SLOW`], and on any single allocation larger than the input justifies
//! ([`allowed`]: a header that claims 2⁶² tensors must be refused before anything is
//! allocated for them). A failing input is written to `target/fuzz-failures/`.
//!
//! Mutations, 1–4 stacked per input: bit flips, interesting bytes, aligned 32- and 64-bit
//! integers overwritten with edge values (0, 1, small counts, ggml type ids, 2³¹−1, 2³²−1,
//! 2⁶², 2⁶⁴−1), truncation, deleted / duplicated / spliced ranges, and for JSON a scalar
//! replaced by an edge value (`1e309`, `-1`, `18446744073709551616`, `null`, `[]`, ...).
//!
//! `LMLAB_FUZZ_INPUTS` sets the inputs per harness (default 100,000; CI runs the default);
//! a longer run, e.g. ten million per harness:
//! `LMLAB_FUZZ_INPUTS=10000000 cargo nextest run --test fuzz --no-capture`.
//! `LMLAB_FUZZ_SEED` changes the mutation stream (default 0).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lmlab::lm::gguf::Gguf;
use lmlab::lm::quant::{QKind, QLlama};
use lmlab::lm::{Llama, LlamaConfig, Tokenizer};
use lmlab::rng::Rng as ChaCha8Rng;
use rand::Rng as _;

/// Counts the largest single allocation of the current thread.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size)
        }
    });
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The largest single allocation an input of `len` bytes may cause: 32 bytes per input byte
/// (dequantizing 4-bit blocks to f32 is 8×, building a tokenizer a few times its text), plus
/// 4 MiB for tables whose size does not depend on the input.
fn allowed(len: usize) -> usize {
    32 * len + (4 << 20)
}

/// An input slower than this is a hang.
const SLOW: Duration = Duration::from_secs(2);

fn inputs() -> usize {
    std::env::var("LMLAB_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// The last panic's message (the hook prints nothing while fuzzing).
static PANIC: Mutex<Option<String>> = Mutex::new(None);

fn quiet_panics() {
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| l.to_string()).unwrap_or_default();
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        *PANIC.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{msg} at {at}"));
    }));
}

const U32_EDGES: [u32; 14] = [
    0,
    1,
    2,
    3,
    7,
    8,
    12,
    14,
    30,
    255,
    65_535,
    0x7fff_ffff,
    0x8000_0000,
    u32::MAX,
];
const U64_EDGES: [u64; 8] = [0, 1, 4, 1 << 31, 1 << 32, 1 << 40, 1 << 62, u64::MAX];
const BYTE_EDGES: [u8; 7] = [0, 1, 0x20, 0x7f, 0x80, 0xfe, 0xff];
const JSON_EDGES: [&str; 16] = [
    "0",
    "-1",
    "1",
    "1e309",
    "-1e309",
    "18446744073709551616",
    "4294967296",
    "0.5",
    "1e-45",
    "null",
    "true",
    "\"\"",
    "[]",
    "{}",
    "\"\\ud800\"",
    "9007199254740993",
];

/// One mutated input from `seeds`.
fn mutate(rng: &mut ChaCha8Rng, seeds: &[Vec<u8>], json: bool) -> Vec<u8> {
    let mut b = seeds[rng.random_range(0..seeds.len())].clone();
    if rng.random_ratio(1, 64) {
        return b;
    }
    let cap = 2 * seeds.iter().map(Vec::len).max().unwrap_or(0) + 64;
    for _ in 0..rng.random_range(1..=4) {
        let len = b.len();
        match rng.random_range(0..if json { 10 } else { 8 }) {
            0 if len > 0 => {
                for _ in 0..rng.random_range(1..=8) {
                    let i = rng.random_range(0..len);
                    b[i] ^= 1 << rng.random_range(0..8);
                }
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                b[i] = BYTE_EDGES[rng.random_range(0..BYTE_EDGES.len())];
            }
            2 if len >= 4 => {
                let i = rng.random_range(0..len / 4) * 4;
                let v = U32_EDGES[rng.random_range(0..U32_EDGES.len())];
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            3 if len >= 8 => {
                let i = rng.random_range(0..len / 8) * 8;
                let v = U64_EDGES[rng.random_range(0..U64_EDGES.len())];
                b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            4 => b.truncate(rng.random_range(0..=len)),
            5 if len > 0 => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(0..=(len - i).min(64));
                b.drain(i..i + n);
            }
            6 if len > 0 && len < cap => {
                let i = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - i).min(64));
                let piece: Vec<u8> = b[i..i + n].to_vec();
                let at = rng.random_range(0..=len);
                b.splice(at..at, piece);
            }
            7 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                if !other.is_empty() && len > 0 {
                    let i = rng.random_range(0..other.len());
                    let n = rng.random_range(1..=(other.len() - i).min(256));
                    let at = rng.random_range(0..len);
                    let end = (at + n).min(len);
                    b.splice(at..end, other[i..i + n].iter().copied());
                }
            }
            // JSON: a scalar (number, literal or string) replaced by an edge value.
            _ if len > 0 => {
                let starts: Vec<usize> = (0..len)
                    .filter(|&i| {
                        let c = b[i];
                        (c.is_ascii_digit() || c == b'-' || c == b'"' || c == b't' || c == b'n')
                            && (i == 0 || matches!(b[i - 1], b':' | b'[' | b',' | b' '))
                    })
                    .collect();
                if starts.is_empty() {
                    continue;
                }
                let i = starts[rng.random_range(0..starts.len())];
                let mut end = i + 1;
                if b[i] == b'"' {
                    while end < len && b[end] != b'"' {
                        end += if b[end] == b'\\' { 2 } else { 1 };
                    }
                    end = (end + 1).min(len);
                } else {
                    while end < len && !matches!(b[end], b',' | b']' | b'}' | b' ' | b'\n') {
                        end += 1;
                    }
                }
                let edge = JSON_EDGES[rng.random_range(0..JSON_EDGES.len())];
                b.splice(i..end, edge.bytes());
            }
            _ => {}
        }
    }
    b
}

/// Runs `inputs()` mutated inputs through `f` (true: the input was accepted, false: refused
/// with an error); asserts no panic, hang or oversized allocation, and that both outcomes
/// occur (the mutations reach past the first check).
fn fuzz(name: &str, seeds: Vec<Vec<u8>>, json: bool, f: impl Fn(&[u8]) -> bool) {
    quiet_panics();
    let n = inputs();
    let seed = std::env::var("LMLAB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0u64);
    let mut rng = lmlab::rng::rng(seed, name.bytes().map(u64::from).sum::<u64>());
    let (mut accepted, mut refused) = (0usize, 0usize);
    let mut failures: Vec<String> = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut worst_ratio = 0f64;
    let t0 = Instant::now();
    let dir = common::root().join("target/fuzz-failures");
    for i in 0..n {
        let input = mutate(&mut rng, &seeds, json);
        LARGEST.with(|c| c.set(0));
        let t = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| f(&input)));
        let took = t.elapsed();
        let largest = LARGEST.with(|c| c.get());
        slowest = slowest.max(took);
        worst_ratio = worst_ratio.max(largest as f64 / allowed(input.len()) as f64);
        // A panic caught inside the code under test counts too (the hook saw it).
        let panicked = PANIC.lock().unwrap_or_else(|p| p.into_inner()).take();
        let problem = match r {
            _ if panicked.is_some() => Some(format!("panic: {}", panicked.unwrap_or_default())),
            Err(_) => Some("panic".into()),
            Ok(_) if took > SLOW => Some(format!("took {took:?}")),
            Ok(_) if largest > allowed(input.len()) => Some(format!(
                "allocated {largest} bytes at once for a {}-byte input",
                input.len()
            )),
            Ok(true) => {
                accepted += 1;
                None
            }
            Ok(false) => {
                refused += 1;
                None
            }
        };
        if let Some(p) = problem {
            if failures.len() < 5 {
                let _ = std::fs::create_dir_all(&dir);
                let file = dir.join(format!("{name}-{seed}-{i}.bin"));
                let _ = std::fs::write(&file, &input);
                failures.push(format!("input {i} ({}): {p}", file.display()));
            } else {
                failures.push(p);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{name}: {n} inputs in {secs:.1} s ({:.0}/s): {accepted} accepted, {refused} refused, \
         {} failures; slowest {slowest:?}; largest allocation {:.3} of the allowance",
        n as f64 / secs,
        failures.len(),
        worst_ratio
    );
    let _ = std::panic::take_hook();
    assert!(
        failures.is_empty(),
        "{name}: {} failing inputs, first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    if n >= 1000 {
        assert!(
            accepted > 0 && refused > 0,
            "{name}: {accepted} accepted, {refused} refused"
        );
    }
}

/// A tiny Llama (and a BPE tokenizer trained on a few words) for seed files.
fn tiny() -> (Llama, Tokenizer) {
    let tok = lmlab::lm::tokenizer::train_bpe(
        [
            "the cat sat on the mat",
            "a dog ran 12 laps",
            "naïve café 🙂",
        ],
        20,
    )
    .unwrap();
    let config = LlamaConfig {
        vocab_size: tok.vocab_size(),
        dim: 32,
        n_layers: 1,
        n_heads: 2,
        n_kv_heads: 1,
        hidden_dim: 32,
        max_seq_len: 16,
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: true,
        value_head: false,
        arch: Default::default(),
    };
    let device = lmlab::device::parse_device("cpu").unwrap();
    let model = Llama::init(config, &mut lmlab::rng::rng(1, 0), &device).unwrap();
    (model, tok)
}

#[test]
fn fuzz_gguf() {
    let (model, tok) = tiny();
    let dir = tempfile::tempdir().unwrap();
    // Byte-level BPE (`gpt2`) and SentencePiece (`llama`: stories260K's own vocabulary) files,
    // F32 and Q8_0.
    let mut models = vec![(model.clone(), tok)];
    if let Some(data) = common::data_dir("stories260k/tok512.bin") {
        let spm =
            lmlab::lm::llama2c::Llama2cTokenizer::load(&data.join("stories260k/tok512.bin"), 512)
                .unwrap();
        let config = LlamaConfig {
            vocab_size: 512,
            ..model.config.clone()
        };
        let device = lmlab::device::parse_device("cpu").unwrap();
        let m = Llama::init(config, &mut lmlab::rng::rng(2, 0), &device).unwrap();
        models.push((m, Tokenizer::Llama2c(spm)));
    }
    let mut seeds = Vec::new();
    for (i, (model, tok)) in models.iter().enumerate() {
        for ty in [
            lmlab::lm::export::GgufType::F32,
            lmlab::lm::export::GgufType::Q8_0,
        ] {
            let path = dir.path().join(format!("{i}-{ty:?}.gguf"));
            lmlab::lm::export::write_gguf(model, tok, &path, ty, "tiny").unwrap();
            seeds.push(std::fs::read(&path).unwrap());
        }
    }
    // Each seed loads as a user's file does.
    for s in &seeds {
        let g = Gguf::parse(s.clone()).unwrap();
        g.tokenizer().unwrap();
        QLlama::from_gguf(g).unwrap();
    }
    // `Gguf::tokenizer` reads the metadata alone and rebuilding a tokenizer takes ~1 ms (its
    // regexes compile): it runs once per distinct set of `tokenizer.*` metadata, whose outcome
    // is then known.
    let built = std::cell::RefCell::new(std::collections::HashMap::<u64, bool>::new());
    fuzz("gguf", seeds, false, |b| {
        let Ok(g) = Gguf::parse(b.to_vec()) else {
            return false;
        };
        let key = {
            use std::hash::{Hash, Hasher};
            let mut entries: Vec<String> = g
                .metadata
                .iter()
                .filter(|(k, _)| k.starts_with("tokenizer."))
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            entries.sort();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            entries.hash(&mut h);
            h.finish()
        };
        let known = built.borrow().get(&key).copied();
        let tok_ok = match known {
            Some(ok) => ok,
            None => {
                let tok = g.tokenizer();
                if let Ok(t) = &tok {
                    let ids = t.encode("the cat 12 naïve", true);
                    t.decode(&ids, None);
                }
                built.borrow_mut().insert(key, tok.is_ok());
                tok.is_ok()
            }
        };
        let _ = g.chat_template();
        let Ok(config) = g.config() else { return false };
        let weights = g.weights(&config);
        let q = QLlama::from_gguf(g);
        tok_ok && weights.is_ok() && q.is_ok()
    });
}

#[test]
fn fuzz_llama2c() {
    let (model, _) = tiny();
    let c = &model.config;
    let w = model.to_weights();
    // llama2.c's layout: the 7-int header (vocab negative: untied), then the weights.
    let mut bin = Vec::new();
    for v in [
        c.dim,
        c.hidden_dim,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.vocab_size,
        c.max_seq_len,
    ] {
        bin.extend((v as i32).to_le_bytes());
    }
    let mut put = |xs: &[f32]| xs.iter().for_each(|x| bin.extend(x.to_le_bytes()));
    put(&w.embed);
    for f in [
        |l: &lmlab::lm::LayerWeights| l.attn_norm.clone(),
        |l: &lmlab::lm::LayerWeights| l.wq.clone(),
        |l: &lmlab::lm::LayerWeights| l.wk.clone(),
        |l: &lmlab::lm::LayerWeights| l.wv.clone(),
        |l: &lmlab::lm::LayerWeights| l.wo.clone(),
        |l: &lmlab::lm::LayerWeights| l.ffn_norm.clone(),
        |l: &lmlab::lm::LayerWeights| l.w1.clone(),
        |l: &lmlab::lm::LayerWeights| l.w2.clone(),
        |l: &lmlab::lm::LayerWeights| l.w3.clone(),
    ] {
        for l in &w.layers {
            put(&f(l));
        }
    }
    put(&w.final_norm);
    // The unused rotary tables (seq_len × head_dim / 2, twice).
    put(&vec![0.0; c.max_seq_len * c.head_dim()]);
    lmlab::lm::llama2c::parse_checkpoint(&bin).expect("the seed checkpoint parses");
    fuzz("llama2c", vec![bin], false, |b| {
        let Ok((config, weights)) = lmlab::lm::llama2c::parse_checkpoint(b) else {
            return false;
        };
        QLlama::from_weights(config, weights, QKind::Q8_0);
        true
    });
}

#[test]
fn fuzz_llama2c_tokenizer() {
    let Some(dir) = common::data_dir("stories260k/tok512.bin") else {
        return;
    };
    let seed = std::fs::read(dir.join("stories260k/tok512.bin")).unwrap();
    lmlab::lm::llama2c::Llama2cTokenizer::parse(&seed, 512).unwrap();
    fuzz("llama2c-tokenizer", vec![seed], false, |b| {
        let Ok(t) = lmlab::lm::llama2c::Llama2cTokenizer::parse(b, 512) else {
            return false;
        };
        let ids = t.encode("Once upon a time, 12 cats", true, false);
        t.decode(&ids, true);
        true
    });
}

#[test]
fn fuzz_safetensors_and_config() {
    let (model, tok) = tiny();
    let dir = tempfile::tempdir().unwrap();
    lmlab::lm::export::write_hf(&model, &tok, dir.path()).unwrap();
    let config = std::fs::read(dir.path().join("config.json")).unwrap();
    let weights = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let load = |config: &[u8], weights: &[u8]| -> bool {
        let Ok(text) = std::str::from_utf8(config) else {
            return false;
        };
        let Ok(c) = lmlab::lm::hf::parse_config(text) else {
            return false;
        };
        let Ok(w) = lmlab::lm::hf::parse_weights(weights, &c) else {
            return false;
        };
        QLlama::from_weights(c, w, QKind::Q8_0);
        true
    };
    assert!(load(&config, &weights), "the seed folder loads");
    // The config and the weights file are mutated in turn, the other left whole.
    let (c2, w2) = (config.clone(), weights.clone());
    fuzz("config.json", vec![config], true, |b| load(b, &w2));
    fuzz("safetensors", vec![weights], false, |b| load(&c2, b));
}

#[test]
fn fuzz_tokenizer_json() {
    let (_, tok) = tiny();
    let json = lmlab::lm::export::tokenizer_json(&tok)
        .unwrap()
        .to_string()
        .into_bytes();
    assert!(Tokenizer::from_hf_bytes(&json, None, 2).is_ok());
    fuzz("tokenizer.json", vec![json], true, |b| {
        let Ok(t) = Tokenizer::from_hf_bytes(b, Some(1), 2) else {
            return false;
        };
        let ids = t.encode("the cat sat 12 naïve 🙂", true);
        t.decode(&ids, None);
        t.decode_with_special(&ids, None);
        true
    });
}

#[test]
fn fuzz_serve_requests() {
    use lmlab::lm::serve::{parse_chat, parse_completion};
    let (_, tok) = tiny();
    let template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}\
                    {% if add_generation_prompt %}<|assistant|>{% endif %}";
    let seeds: Vec<Vec<u8>> = [
        r#"{"model": "m", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "seed": 0}"#,
        r#"{"model": "m", "prompt": "The cat", "max_tokens": 0, "echo": true, "logprobs": 2, "temperature": 0}"#,
        r#"{"model": "m", "prompt": ["One, two,", "A, B,"], "n": 2, "max_tokens": 4, "temperature": 0.8, "seed": 3, "stop": ["\n", "."]}"#,
        r#"{"model": "default", "prompt": [1, 2, 3], "max_tokens": 1, "echo": true, "logprobs": 1, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}"#,
        r#"{"prompt": [[5, 6, 7], [8, 9]], "max_tokens": 1, "echo": true, "logprobs": 1, "temperature": 0}"#,
        r#"{"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}], "max_tokens": 12, "temperature": 0, "logprobs": true, "top_logprobs": 1}"#,
        r#"{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_completion_tokens": 5, "stream": false}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    fuzz("serve-requests", seeds, true, |b| {
        let c = parse_completion(b, &tok, 16, 0);
        let h = parse_chat(b, &tok, Some(template), 16, 0);
        // Whatever parses is a request the engine accepts.
        if let Ok(c) = &c {
            for r in &c.requests {
                r.params.validate().unwrap();
                assert!(r.prompt.len() <= 16 && r.params.max_new_tokens <= 16);
            }
        }
        if let Err(e) = &c {
            assert_eq!(e.status, 400);
            e.body();
        }
        c.is_ok() || h.is_ok()
    });
}

/// Headers that claim huge counts or sizes are refused before anything is allocated for them.
#[test]
fn huge_claims_are_refused_before_allocating() {
    let mut gguf = b"GGUF".to_vec();
    gguf.extend(3u32.to_le_bytes());
    gguf.extend((1u64 << 62).to_le_bytes()); // tensors
    gguf.extend(0u64.to_le_bytes()); // metadata
    let mut llama2c = Vec::new();
    for v in [1 << 16, 1 << 18, 1024, 1024, 1024, 1 << 22, 1 << 20] {
        llama2c.extend((v as i32).to_le_bytes());
    }
    let mut st = Vec::new();
    let header = r#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}"#;
    st.extend((header.len() as u64).to_le_bytes());
    st.extend(header.as_bytes());
    st.extend([0u8; 16]);
    let config = lmlab::lm::hf::parse_config(
        r#"{"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 4}"#,
    );
    for (name, bytes) in [("gguf", &gguf), ("llama2c", &llama2c), ("safetensors", &st)] {
        LARGEST.with(|c| c.set(0));
        let refused = match name {
            "gguf" => Gguf::parse(bytes.clone()).is_err(),
            "llama2c" => lmlab::lm::llama2c::parse_checkpoint(bytes).is_err(),
            _ => config
                .as_ref()
                .map_or(true, |c| lmlab::lm::hf::parse_weights(bytes, c).is_err()),
        };
        let largest = LARGEST.with(|c| c.get());
        assert!(refused, "{name}");
        assert!(
            largest < allowed(bytes.len()),
            "{name}: allocated {largest}"
        );
        println!("{name}: refused; largest allocation {largest} bytes");
    }
}
