//! ListOps (Nangia & Bowman, 2018): nested list operations over single digits.
//!
//! The generator follows the original `make_data.py`: a node is an operator with probability
//! `operator_prob` (a value otherwise, always a value at `max_depth`), an operator takes
//! `min_args..=max_args` arguments, operators are `MIN`, `MAX`, `MED` (integer median: the
//! mean of the two middle values, truncated, for an even count) and `SM` (sum mod 10), and an
//! example is written in the original TSV format: `label<TAB>expression`, where the expression
//! is the left-branching bracketing `( ( ( [MAX 2 ) 9 ) ] )`. The same [`parse_line`] reads
//! generated lines and the real files.
//!
//! A model sees the tokens without `(` and `)` (operators, digits and `]`, as in the Ordered
//! Memory reference code); the parentheses give the gold tree, kept as its spans.

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::{Context, bail};
use lmlab_sdk::rng::{Rng, rng};
use lmlab_sdk::{Split, Task};
use rand::Rng as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The operators: the generator uses the first four (as the original's released data); the
/// loader also reads `FIRST` and `LAST`, which the original code defines and the small
/// `test.tsv` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Min,
    Max,
    Med,
    Sm,
    First,
    Last,
}

impl Op {
    pub const ALL: [Op; 6] = [Op::Min, Op::Max, Op::Med, Op::Sm, Op::First, Op::Last];
    /// The operators the generator draws from.
    pub const GENERATED: [Op; 4] = [Op::Min, Op::Max, Op::Med, Op::Sm];

    /// The token, e.g. `[MAX`.
    pub fn token(self) -> &'static str {
        match self {
            Op::Min => "[MIN",
            Op::Max => "[MAX",
            Op::Med => "[MED",
            Op::Sm => "[SM",
            Op::First => "[FIRST",
            Op::Last => "[LAST",
        }
    }

    /// The operator's value on `args` (non-empty digits).
    pub fn apply(self, args: &[u8]) -> u8 {
        match self {
            Op::Min => *args.iter().min().expect("an operator has arguments"),
            Op::Max => *args.iter().max().expect("an operator has arguments"),
            Op::Sm => (args.iter().map(|&a| a as u32).sum::<u32>() % 10) as u8,
            Op::First => args[0],
            Op::Last => args[args.len() - 1],
            Op::Med => {
                let mut s = args.to_vec();
                s.sort_unstable();
                let n = s.len();
                if n % 2 == 1 {
                    s[n / 2]
                } else {
                    ((s[n / 2 - 1] as u32 + s[n / 2] as u32) / 2) as u8
                }
            }
        }
    }
}

/// A ListOps expression tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Tree {
    Digit(u8),
    Node(Op, Vec<Tree>),
}

impl Tree {
    /// The expression's value (recursively; [`evaluate_tokens`] is the independent check).
    pub fn value(&self) -> u8 {
        match self {
            Tree::Digit(d) => *d,
            Tree::Node(op, args) => op.apply(&args.iter().map(Tree::value).collect::<Vec<_>>()),
        }
    }

    /// Operator nesting depth (a digit has depth 0).
    pub fn depth(&self) -> usize {
        match self {
            Tree::Digit(_) => 0,
            Tree::Node(_, args) => 1 + args.iter().map(Tree::depth).max().unwrap_or(0),
        }
    }

    /// Tokens without parentheses: `[MAX 2 9 ]`.
    pub fn len(&self) -> usize {
        match self {
            Tree::Digit(_) => 1,
            Tree::Node(_, args) => 2 + args.iter().map(Tree::len).sum::<usize>(),
        }
    }

    /// Always false: a tree has at least one token.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The original bracketing: `( ( ( [MAX 2 ) 9 ) ] )`.
    pub fn to_bracketed(&self) -> String {
        match self {
            Tree::Digit(d) => d.to_string(),
            Tree::Node(op, args) => {
                let mut t = format!("( {} {} )", op.token(), args[0].to_bracketed());
                for a in &args[1..] {
                    t = format!("( {t} {} )", a.to_bracketed());
                }
                format!("( {t} ] )")
            }
        }
    }

    /// The original TSV line: `label<TAB>expression`.
    pub fn to_tsv(&self) -> String {
        format!("{}\t{}", self.value(), self.to_bracketed())
    }
}

/// Generator settings (the original's constants are the defaults, except the depth).
#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    pub max_depth: usize,
    pub min_args: usize,
    pub max_args: usize,
    pub operator_prob: f64,
}

/// One tree by the original recursion; `depth` starts at 1 for the root.
pub fn generate_tree(cfg: &GenConfig, depth: usize, r: &mut Rng) -> Tree {
    let operator = depth < cfg.max_depth && r.random::<f64>() <= cfg.operator_prob;
    if !operator {
        return Tree::Digit(r.random_range(0..10));
    }
    let n = r.random_range(cfg.min_args..=cfg.max_args);
    let args = (0..n).map(|_| generate_tree(cfg, depth + 1, r)).collect();
    Tree::Node(Op::GENERATED[r.random_range(0..4)], args)
}

/// Token ids: 0 is padding, then the digits (1–10), the operators (11–16, in [`Op::ALL`]'s
/// order) and `]` (17).
pub const PAD: u32 = 0;
pub const VOCAB: usize = 18;
const CLOSE: u32 = 17;

/// The id of a (parenthesis-free) token, if it is one.
pub fn token_id(t: &str) -> Option<u32> {
    match t {
        "]" => Some(CLOSE),
        _ => {
            if let Some(i) = Op::ALL.iter().position(|o| o.token() == t) {
                return Some(11 + i as u32);
            }
            match t.as_bytes() {
                [d @ b'0'..=b'9'] => Some(1 + (d - b'0') as u32),
                _ => None,
            }
        }
    }
}

/// The token of an id.
pub fn token_str(id: u32) -> &'static str {
    const NAMES: [&str; VOCAB] = [
        "<pad>", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "[MIN", "[MAX", "[MED", "[SM",
        "[FIRST", "[LAST", "]",
    ];
    NAMES.get(id as usize).copied().unwrap_or("<unk>")
}

/// One example: the model's tokens, the label, and the gold tree's spans (half-open ranges of
/// token positions, one per bracket pair that covers at least two tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub label: u8,
    pub gold: Vec<(usize, usize)>,
    pub depth: usize,
}

impl Example {
    /// The root's operator (`None` for a lone digit): the last operation the model must apply.
    pub fn root(&self) -> Option<Op> {
        let first = *self.tokens.first()? as usize;
        Op::ALL.get(first.checked_sub(11)?).copied()
    }
}

/// Parses a line of the original TSV format; the label must equal the expression's value.
pub fn parse_line(line: &str) -> anyhow::Result<Example> {
    let (label, expr) = line
        .split_once('\t')
        .context("expected `label<TAB>expression`")?;
    let label: u8 = label
        .trim()
        .parse()
        .ok()
        .filter(|l| *l < 10)
        .with_context(|| format!("label `{label}` is not a digit"))?;
    let mut tokens = Vec::new();
    let mut open = Vec::new();
    let mut gold = Vec::new();
    for t in expr.split_whitespace() {
        match t {
            "(" => open.push(tokens.len()),
            ")" => {
                let start = open.pop().context("unbalanced `)`")?;
                if tokens.len() - start >= 2 {
                    gold.push((start, tokens.len()));
                }
            }
            _ => tokens.push(token_id(t).with_context(|| format!("unknown token `{t}`"))?),
        }
    }
    if !open.is_empty() {
        bail!("unbalanced `(`");
    }
    let (value, depth) = evaluate_tokens(&tokens)?;
    if value != label {
        bail!("the label is {label} but the expression evaluates to {value}");
    }
    gold.sort_unstable();
    Ok(Example {
        tokens,
        label,
        gold,
        depth,
    })
}

/// The value and operator depth of a parenthesis-free token sequence, by a stack machine.
pub fn evaluate_tokens(tokens: &[u32]) -> anyhow::Result<(u8, usize)> {
    let mut frames: Vec<(Op, Vec<u8>)> = Vec::new();
    let mut result = None;
    let mut depth = 0;
    for &t in tokens {
        anyhow::ensure!(result.is_none(), "tokens after the expression ended");
        match t {
            1..=10 => {
                let d = (t - 1) as u8;
                match frames.last_mut() {
                    Some(f) => f.1.push(d),
                    None => result = Some(d),
                }
            }
            11..=16 => {
                frames.push((Op::ALL[(t - 11) as usize], Vec::new()));
                depth = depth.max(frames.len());
            }
            CLOSE => {
                let (op, args) = frames.pop().context("`]` without an operator")?;
                anyhow::ensure!(!args.is_empty(), "an operator without arguments");
                let v = op.apply(&args);
                match frames.last_mut() {
                    Some(f) => f.1.push(v),
                    None => result = Some(v),
                }
            }
            _ => bail!("token id {t} is not a ListOps token"),
        }
    }
    anyhow::ensure!(frames.is_empty(), "an operator is not closed");
    Ok((result.context("an empty expression")?, depth))
}

/// Reads a ListOps TSV file (generated or real), line by line; an error names the line.
pub fn read_tsv(path: &std::path::Path) -> anyhow::Result<Vec<Example>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(l).with_context(|| format!("{}:{}", path.display(), i + 1)))
        .collect()
}

/// Configuration of the task `listops`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ListOpsConfig {
    /// The original generator's `MAX_DEPTH` for the train, validation and test examples: the
    /// root is at depth 1 and a node at `max_depth` is always a digit, so operators nest at
    /// most `max_depth − 1` deep.
    pub max_depth: usize,
    /// Arguments per operator: `min_args..=max_args`.
    pub min_args: usize,
    pub max_args: usize,
    /// Probability that a node (above `max_depth`) is an operator.
    pub operator_prob: f64,
    /// Length range (tokens without parentheses) of the train, validation and test examples.
    pub min_len: usize,
    pub max_len: usize,
    pub n_train: usize,
    pub n_validation: usize,
    pub n_test: usize,
    /// The longer generated test set: `long_min_len..=long_max_len` tokens, generated with
    /// `MAX_DEPTH = long_max_depth`; `n_long = 0` skips it.
    pub long_min_len: usize,
    pub long_max_len: usize,
    pub long_max_depth: usize,
    pub n_long: usize,
    /// Real test files under the data folder (`LMLAB_DATA_DIR`, default `../shared/data`),
    /// evaluation only; a missing file is skipped with the reason in the summary.
    pub real_files: Vec<String>,
    /// Use only the first `real_limit` lines of each real file (none: all).
    pub real_limit: Option<usize>,
}

impl Default for ListOpsConfig {
    fn default() -> Self {
        Self {
            max_depth: 6,
            min_args: 2,
            max_args: 5,
            operator_prob: 0.25,
            min_len: 2,
            max_len: 60,
            n_train: 50_000,
            n_validation: 1000,
            n_test: 2000,
            long_min_len: 61,
            long_max_len: 150,
            long_max_depth: 6,
            n_long: 1000,
            real_files: vec!["listops/test_d20s.tsv".into()],
            real_limit: None,
        }
    }
}

/// A real test set, or why it is missing.
pub struct RealSet {
    pub name: String,
    pub path: PathBuf,
    pub examples: anyhow::Result<Vec<Example>>,
}

/// The task `listops`: generated train/validation/test splits (disjoint expressions), a longer
/// generated test set, and the real files.
pub struct ListOpsTask {
    pub config: ListOpsConfig,
    seed: u64,
}

impl ListOpsTask {
    pub fn new(config: ListOpsConfig, seed: u64) -> Self {
        Self { config, seed }
    }

    /// Generates `n` distinct examples with lengths in `lo..=hi` and depth at most
    /// `max_depth`, none of whose expressions is in `exclude` (which gains them).
    fn generate(
        &self,
        n: usize,
        (lo, hi): (usize, usize),
        max_depth: usize,
        stream: u64,
        exclude: &mut HashSet<Tree>,
    ) -> anyhow::Result<Vec<Example>> {
        let c = &self.config;
        let generator = GenConfig {
            max_depth,
            min_args: c.min_args,
            max_args: c.max_args,
            operator_prob: c.operator_prob,
        };
        let mut r = rng(self.seed, stream);
        let mut out = Vec::with_capacity(n);
        let mut tries = 0u64;
        while out.len() < n {
            tries += 1;
            anyhow::ensure!(
                tries < 2_000 * n as u64 + 1_000_000,
                "task `listops`: could not generate {n} distinct examples of {lo}..={hi} tokens at depth ≤ {max_depth} (got {})",
                out.len()
            );
            let t = generate_tree(&generator, 1, &mut r);
            let len = t.len();
            if len < lo || len > hi || exclude.contains(&t) {
                continue;
            }
            let ex = parse_line(&t.to_tsv())?;
            exclude.insert(t);
            out.push(ex);
        }
        Ok(out)
    }

    /// All generated splits: (train, validation, test, long).
    pub fn generated(&self) -> anyhow::Result<[Vec<Example>; 4]> {
        let c = &self.config;
        let mut seen = HashSet::new();
        // Test sets first, so the training set excludes them whatever its size.
        let test = self.generate(c.n_test, (c.min_len, c.max_len), c.max_depth, 3, &mut seen)?;
        let long = self.generate(
            c.n_long,
            (c.long_min_len, c.long_max_len),
            c.long_max_depth,
            4,
            &mut seen,
        )?;
        let validation = self.generate(
            c.n_validation,
            (c.min_len, c.max_len),
            c.max_depth,
            2,
            &mut seen,
        )?;
        let train = self.generate(c.n_train, (c.min_len, c.max_len), c.max_depth, 1, &mut seen)?;
        Ok([train, validation, test, long])
    }

    /// The real test files.
    pub fn real(&self) -> Vec<RealSet> {
        let dir = lmlab_sdk::data_dir();
        self.config
            .real_files
            .iter()
            .map(|f| {
                let path = dir.join(f);
                let examples = read_tsv(&path).map(|mut v| {
                    if let Some(l) = self.config.real_limit {
                        v.truncate(l);
                    }
                    v
                });
                RealSet {
                    name: f.clone(),
                    path,
                    examples,
                }
            })
            .collect()
    }
}

impl Task for ListOpsTask {
    type Problem = Example;
    type Output = u8;

    fn problems(&self, split: Split) -> anyhow::Result<Vec<Example>> {
        let [train, validation, test, _] = self.generated()?;
        Ok(match split {
            Split::Train => train,
            Split::Validation => validation,
            Split::Test => test,
        })
    }

    fn check(&self, problem: &Example, output: &u8) -> bool {
        problem.label == *output
    }
}

lmlab_sdk::register_component! {
    kind: Task,
    name: "listops",
    description: "ListOps (generated as the original, and the real test files): classify the value of nested MIN/MAX/MED/SM lists",
    config: ListOpsConfig,
    build: |config: ListOpsConfig, ctx| {
        let err = |f: &str, m: &str| -> anyhow::Error { lmlab_sdk::registry::ConfigError { field: Some(f.into()), message: m.into() }.into() };
        if config.max_depth == 0 || config.long_max_depth == 0 { return Err(err("max_depth", "must be at least 1")); }
        if config.min_args == 0 || config.min_args > config.max_args { return Err(err("min_args", "must be at least 1 and at most max_args")); }
        if !(config.operator_prob > 0.0 && config.operator_prob <= 1.0) { return Err(err("operator_prob", "must be in (0, 1]")); }
        if config.min_len == 0 || config.min_len > config.max_len { return Err(err("min_len", "must be at least 1 and at most max_len")); }
        if config.n_long > 0 && config.long_min_len > config.long_max_len { return Err(err("long_min_len", "must be at most long_max_len")); }
        if config.n_train == 0 || config.n_test == 0 || config.n_validation == 0 { return Err(err("n_train", "n_train, n_validation and n_test must be at least 1")); }
        Ok(Box::new(ListOpsTask::new(config, ctx.seed)) as Box<ListOpsTask>)
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn generated_lines_parse_back_to_the_same_label(seed in 0u64..10_000, depth in 1usize..8) {
            let cfg = GenConfig { max_depth: depth, min_args: 2, max_args: 5, operator_prob: 0.25 };
            let t = generate_tree(&cfg, 1, &mut rng(seed, 0));
            let ex = parse_line(&t.to_tsv()).unwrap();
            prop_assert_eq!(ex.label, t.value());
            prop_assert_eq!(ex.tokens.len(), t.len());
            prop_assert_eq!(ex.depth, t.depth());
            prop_assert!(t.depth() < depth, "operators nest below MAX_DEPTH");
            // Every operator contributes one span per argument (the left-branching brackets).
            let args = |t: &Tree| -> usize {
                fn go(t: &Tree) -> usize { match t { Tree::Digit(_) => 0, Tree::Node(_, a) => a.len() + 1 + a.iter().map(go).sum::<usize>() } }
                go(t)
            };
            prop_assert_eq!(ex.gold.len(), args(&t));
        }
    }

    #[test]
    fn operators_follow_the_original_definitions() {
        assert_eq!(Op::Med.apply(&[3, 6]), 4);
        assert_eq!(Op::Med.apply(&[9, 1, 5]), 5);
        assert_eq!(Op::Sm.apply(&[9, 8, 7]), 4);
        assert_eq!(Op::Min.apply(&[4, 2, 8]), 2);
        assert_eq!(Op::Max.apply(&[4, 2, 8]), 8);
        assert_eq!(Op::First.apply(&[4, 2, 8]), 4);
        assert_eq!(Op::Last.apply(&[4, 2, 8]), 8);
        for id in 0..VOCAB as u32 {
            if id != PAD {
                assert_eq!(token_id(token_str(id)), Some(id));
            }
        }
    }

    #[test]
    fn parses_the_original_format_and_its_spans() {
        let ex = parse_line("9\t( ( ( [MAX 2 ) 9 ) ] )").unwrap();
        assert_eq!(ex.root(), Some(Op::Max));
        assert_eq!(parse_line("4\t4").unwrap().root(), None);
        assert_eq!(
            parse_line("3\t( ( ( [SM 1 ) 2 ) ] )").unwrap().root(),
            Some(Op::Sm)
        );
        assert_eq!(ex.tokens.len(), 4);
        assert_eq!(ex.gold, vec![(0, 2), (0, 3), (0, 4)]);
        assert_eq!(ex.depth, 1);
        let t = Tree::Node(Op::Max, vec![Tree::Digit(2), Tree::Digit(9)]);
        assert_eq!(t.to_tsv(), "9\t( ( ( [MAX 2 ) 9 ) ] )");
        assert!(
            parse_line("3\t( ( ( [MAX 2 ) 9 ) ] )")
                .unwrap_err()
                .to_string()
                .contains("evaluates to 9")
        );
        assert!(parse_line("9\t( [MAX 2 9 ]").is_err());
        assert!(parse_line("x").is_err());
    }

    #[test]
    fn generated_splits_are_disjoint_and_within_bounds() {
        let cfg = ListOpsConfig {
            n_train: 300,
            n_validation: 50,
            n_test: 50,
            n_long: 20,
            ..Default::default()
        };
        let task = ListOpsTask::new(cfg.clone(), 7);
        let [train, val, test, long] = task.generated().unwrap();
        let key = |e: &Example| e.tokens.clone();
        let train_set: HashSet<_> = train.iter().map(key).collect();
        assert_eq!(train_set.len(), train.len());
        assert!(
            val.iter()
                .chain(&test)
                .chain(&long)
                .all(|e| !train_set.contains(&key(e)))
        );
        assert!(
            train
                .iter()
                .all(|e| e.tokens.len() <= cfg.max_len && e.depth < cfg.max_depth)
        );
        assert!(
            long.iter()
                .all(|e| (cfg.long_min_len..=cfg.long_max_len).contains(&e.tokens.len()))
        );
        assert_eq!(task.generated().unwrap()[0], train, "deterministic");
    }
}
