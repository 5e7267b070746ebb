//! Step checks: every step of a solution re-executed against the problem and judged right or
//! wrong, with what a grader would say of it. A right final answer behind a wrong step is a
//! *false positive*; process-supervised methods (GenRM-CoT's rationales, compute-matched
//! sampling's false-positive rate) read these checks. [`arith`](super::arith) solutions are
//! checked by [`super::arith::step_checks`].

/// One re-executed step: what a grader says of it, and whether it is right.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepCheck {
    pub says: String,
    pub right: bool,
}

impl StepCheck {
    /// A right step.
    pub fn ok(says: impl Into<String>) -> Self {
        Self {
            says: says.into(),
            right: true,
        }
    }

    /// A wrong step.
    pub fn wrong(says: impl Into<String>) -> Self {
        Self {
            says: says.into(),
            right: false,
        }
    }
}

/// The check of a final answer `a` against `last`, the result of the solution's own last step
/// (`missing` says why there is none).
pub fn answer_check(a: Option<String>, last: Option<&str>, missing: &str) -> StepCheck {
    match (a, last) {
        (_, None) => StepCheck::wrong(format!("the answer comes before its steps: {missing}")),
        (None, _) => StepCheck::wrong("the answer line is empty"),
        (Some(a), Some(l)) if a != l => {
            StepCheck::wrong(format!("the answer should be {l}, not {a}"))
        }
        (Some(a), _) => StepCheck::ok(format!("the answer is {a}")),
    }
}

/// Whether every step is right (and there is at least one).
pub fn all_right(checks: &[StepCheck]) -> bool {
    !checks.is_empty() && checks.iter().all(|c| c.right)
}

/// The index of the first wrong step, `None` when every step is right.
pub fn first_wrong(checks: &[StepCheck]) -> Option<usize> {
    checks.iter().position(|c| !c.right)
}
