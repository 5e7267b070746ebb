//! lmlab plugin `weakest-token`: a verifier that ranks a candidate by its least likely token.
//!
//! A solution is only as sound as its shakiest step: the score is the smallest log p(token)
//! over the response (0 for an empty one), under the policy the scheduler hands over (in
//! V-STaR, G_SFT). Use it with `[verifier] use = "weakest-token"`.

use lmlab_sdk::fit::{FitCx, Fitted};
use lmlab_sdk::lm::policy::LmPolicy;
use lmlab_sdk::tasks::TextProblem;
use lmlab_sdk::{Candidate, Policy, Verifier, VerifierSpec};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Configuration of `weakest-token`: what its recipe table may set (nothing).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {}

/// The verifier, scoring under `policy`.
pub struct WeakestToken(pub LmPolicy);

impl Verifier for WeakestToken {
    fn scores(&self, _: &[TextProblem], candidates: &[Candidate]) -> anyhow::Result<Vec<f32>> {
        let mut out = Vec::with_capacity(candidates.len());
        for chunk in candidates.chunks(64) {
            let seqs: Vec<_> = chunk.iter().map(|c| c.completion.sequence()).collect();
            for tokens in self.0.log_probs(&seqs, 1.0)?.per_token()? {
                out.push(tokens.into_iter().fold(0.0, f32::min));
            }
        }
        Ok(out)
    }
}

/// What the recipe table builds: a fixed verifier, so `fit` only takes the policy.
pub struct Spec;

impl VerifierSpec for Spec {
    fn label(&self) -> String {
        "weakest-token log-likelihood".into()
    }

    fn fit(
        &self,
        cx: &mut FitCx,
        _: &[TextProblem],
        _: &[Candidate],
    ) -> anyhow::Result<Fitted<dyn Verifier>> {
        Ok(Fitted::fixed(Box::new(WeakestToken(cx.init.inference()))))
    }
}

lmlab_sdk::register_component! {
    kind: Verifier,
    name: "weakest-token",
    description: "the least likely response token's log-probability under the handed-over policy",
    config: Config,
    build: |_config: Config, _ctx| Ok(Box::new(Spec) as Box<dyn VerifierSpec>),
}
