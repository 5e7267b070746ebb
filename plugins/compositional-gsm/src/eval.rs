//! The evaluation over any [`Policy`] (in-process, a checkpoint, a server): each pair asked as
//! Q1 alone, the standalone Q2 alone, the composed pair and the control (the pair with X given
//! as a number), each with the same worked demonstrations (none for a model trained on the
//! format), decoded by one sampler (the paper: T = 0).

use lmlab_sdk::progress::ProgressBar;
use lmlab_sdk::tasks::gsm8k::own_answer;
use lmlab_sdk::{Policy, Sampler};

use crate::metrics::Outcome;
use crate::pairs::{
    Pair, final_answer_of, pair_answer, pair_question, prompt, q1_answer_of, right, single_answer,
};

/// Worked demonstrations: `(question, answer)` for single problems and for pairs.
#[derive(Clone, Debug, Default)]
pub struct Demos {
    pub single: Vec<(String, String)>,
    pub pair: Vec<(String, String)>,
}

/// The first `shots` pairs of `worked` that have worked solutions, as demonstrations: their
/// Q1s for single problems, themselves for pairs.
pub fn demos(worked: &[Pair], shots: usize) -> anyhow::Result<Demos> {
    let with: Vec<&Pair> = worked
        .iter()
        .filter(|p| p.s1.is_some() && p.s2.is_some())
        .take(shots)
        .collect();
    anyhow::ensure!(
        with.len() == shots,
        "{shots} worked demonstrations wanted, the training split has {} pairs with worked solutions",
        with.len()
    );
    Ok(Demos {
        single: with
            .iter()
            .map(|p| {
                (
                    p.q1.clone(),
                    single_answer(p.s1.as_deref().unwrap_or(""), &p.a1),
                )
            })
            .collect(),
        pair: with
            .iter()
            .map(|p| (pair_question(&p.q1, &p.q2), worked_pair_answer(p)))
            .collect(),
    })
}

/// A worked pair's composed answer.
pub fn worked_pair_answer(p: &Pair) -> String {
    pair_answer(
        p.s1.as_deref().unwrap_or(""),
        &p.a1,
        p.s2.as_deref().unwrap_or(""),
        &p.a2,
    )
}

/// The four prompts of each pair.
#[derive(Clone, Debug, Default)]
pub struct Views {
    pub q1: Vec<String>,
    pub q2: Vec<String>,
    pub pair: Vec<String>,
    pub control: Vec<String>,
}

impl Views {
    pub fn new(pairs: &[Pair], d: &Demos) -> Self {
        Self {
            q1: pairs.iter().map(|p| prompt(&d.single, &p.q1)).collect(),
            q2: pairs
                .iter()
                .map(|p| prompt(&d.single, &p.q2_standalone))
                .collect(),
            pair: pairs
                .iter()
                .map(|p| prompt(&d.pair, &pair_question(&p.q1, &p.q2)))
                .collect(),
            control: pairs
                .iter()
                .map(|p| prompt(&d.pair, &pair_question(&p.q1, &p.q2_standalone)))
                .collect(),
        }
    }

    /// All prompts, view after view.
    pub fn all(&self) -> Vec<String> {
        [&self.q1, &self.q2, &self.pair, &self.control]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }
}

/// What each pair's four answers got right, from the texts (each cut before a next
/// `Question:` it may start).
pub fn outcomes(pairs: &[Pair], texts: [&[String]; 4]) -> Vec<Outcome> {
    let [q1, q2, pair, control] = texts;
    pairs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let cut = |v: &[String]| own_answer(&v[i]).to_string();
            let comp = cut(pair);
            Outcome {
                q1: right(final_answer_of(&cut(q1)), &p.a1),
                q2: right(final_answer_of(&cut(q2)), &p.a2),
                comp: right(final_answer_of(&comp), &p.a2),
                comp_q1: right(q1_answer_of(&comp), &p.a1),
                control: right(final_answer_of(&cut(control)), &p.a2),
            }
        })
        .collect()
}

/// One evaluation: the answers (first completion per prompt, cut) and what they got right.
#[derive(Clone, Debug, Default)]
pub struct Answered {
    /// Per view (Q1, Q2, pair, control), per pair.
    pub texts: [Vec<String>; 4],
    pub outcomes: Vec<Outcome>,
    /// Tokens generated.
    pub tokens: u64,
}

/// Asks `policy` every view of `pairs` through `sampler` (one completion per prompt).
pub fn evaluate(
    policy: &dyn Policy,
    sampler: &dyn Sampler,
    pairs: &[Pair],
    views: &Views,
    seed: u64,
    pb: &ProgressBar,
) -> anyhow::Result<Answered> {
    let all = views.all();
    let sampled = sampler.sample(policy, &all, seed, pb)?;
    anyhow::ensure!(
        sampled.completions.len() == all.len(),
        "the sampler answered {} of {} prompts",
        sampled.completions.len(),
        all.len()
    );
    let mut texts: Vec<String> = Vec::with_capacity(all.len());
    let mut tokens = 0u64;
    for c in &sampled.completions {
        let first = c.first();
        tokens += first.map_or(0, |c| c.token_ids.len() as u64);
        texts.push(first.map_or(String::new(), |c| own_answer(&c.text).to_string()));
    }
    let n = pairs.len();
    let view = |k: usize| texts[k * n..(k + 1) * n].to_vec();
    let t = [view(0), view(1), view(2), view(3)];
    let outcomes = outcomes(pairs, [&t[0], &t[1], &t[2], &t[3]]);
    Ok(Answered {
        texts: t,
        outcomes,
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Pair {
        Pair {
            id: "p".into(),
            q1: "Tom has 3 pens. He gets 4 more. How many pens does Tom have?".into(),
            a1: "7".into(),
            q2: "Mia has X cups. She gets 2 more. How many cups does Mia have?".into(),
            a2: "9".into(),
            q2_standalone: "Mia has 7 cups. She gets 2 more. How many cups does Mia have?".into(),
            s1: Some("3+4=7.".into()),
            s2: Some("7+2=9.".into()),
            program: Some("#1 = X+2".into()),
            x_was: Some("5".into()),
        }
    }

    #[test]
    fn views_and_outcomes_read_each_answer_where_the_paper_does() {
        let p = pair();
        let d = demos(std::slice::from_ref(&p), 1).unwrap();
        assert!(demos(std::slice::from_ref(&p), 2).is_err());
        let v = Views::new(std::slice::from_ref(&p), &d);
        assert!(v.q1[0].starts_with("Question: Tom has 3 pens."));
        assert!(v.q1[0].contains("Answer: 3+4=7. The final answer is 7.\n\nQuestion: Tom"));
        assert!(v.pair[0].ends_with(
            "Q2: Mia has X cups. She gets 2 more. How many cups does Mia have?\nAnswer:"
        ));
        assert!(v.pair[0].contains(
            "3+4=7. The Q1 answer is 7. Therefore X=7. 7+2=9. The final answer is 9.\n\n"
        ));
        assert!(v.control[0].contains("Q2: Mia has 7 cups."));
        assert_eq!(v.all().len(), 4);
        let s = |x: &str| vec![x.to_string()];
        let o = outcomes(
            std::slice::from_ref(&p),
            [
                &s(" 3+4=7. The final answer is 7."),
                &s(" 7+2=9. The final answer is 8."),
                &s(
                    " 3+4=7. The Q1 answer is 7. Therefore X=7. 7+2=9. The final answer is 9.\n\nQuestion: The final answer is 3.",
                ),
                &s(" The Q1 answer is 6. The final answer is 9."),
            ],
        );
        assert_eq!(
            o[0],
            Outcome {
                q1: true,
                q2: false,
                comp: true,
                comp_q1: true,
                control: true
            }
        );
        // An answer after the next question it starts does not count.
        let o = outcomes(
            &[p],
            [
                &s("x\n\nQuestion: The final answer is 7."),
                &s(""),
                &s(""),
                &s(""),
            ],
        );
        assert!(!o[0].q1);
    }
}
