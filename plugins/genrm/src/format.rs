//! GenRM's input format, exactly as the released training data (`genrm-star/genrm-critiques`)
//! writes it: a fixed header, the problem and the solution, then the Direct question or the
//! chain-of-thought instruction.

/// The fixed header every verifier input starts with (three lines and a blank one).
pub const HEADER: &str = "Solve the math problems and provide step-by-step solutions, ending with \"The answer is [Insert Final Answer Here]\".\nWhen asked \"Verification: Is the answer correct (Yes/No)?\", respond with \" Yes\" or \" No\" based on the answer's correctness.\nWhen asked \"Verification: Let's verify step by step.\", verify every step of the solution and conclude with \"Verification: Is the answer correct (Yes/No)?\" followed by \" Yes\" or \" No\".\n\n";

/// The verification question `I`: GenRM-Direct asks it after the solution; a GenRM-CoT
/// rationale ends with it. The score is p(" Yes") right after it.
pub const QUESTION: &str = "Verification: Is the answer correct (Yes/No)?";

/// GenRM-CoT's instruction, asked after the solution.
pub const COT_INSTRUCTION: &str = "Verification: Let's verify step by step.";

/// The two targets, with their leading space.
pub const YES: &str = " Yes";
pub const NO: &str = " No";

/// The strings a from-scratch tokenizer keeps whole (they never vary, so a model trained from
/// scratch gains nothing from reading their words one by one; a checkpoint's tokenizer reads
/// them as it reads any text).
pub const PHRASES: [&str; 3] = [HEADER, QUESTION, COT_INSTRUCTION];

/// The question of a task prompt: the prompt without its trailing newline.
pub fn question(prompt: &str) -> &str {
    prompt.trim_end_matches('\n')
}

/// `HEADER` + `Q: {question}\nA: Let's think step by step.\n`: what a GenRM model continues
/// with a solution (the joint-training data D_correct, and its own generation).
pub fn solve_prompt(question: &str) -> String {
    format!("{HEADER}Q: {question}\nA: Let's think step by step.\n")
}

/// The solution as it appears in a verifier input: the generated text without trailing
/// whitespace (EOS is not text).
fn solution_text(solution: &str) -> &str {
    solution.trim_end()
}

/// GenRM-Direct's input: the solve prompt, the solution, `\n` and the question `I`. Its
/// target is [`YES`] or [`NO`].
pub fn direct_prompt(question: &str, solution: &str) -> String {
    format!(
        "{}{}\n{QUESTION}",
        solve_prompt(question),
        solution_text(solution)
    )
}

/// GenRM-CoT's input: the solve prompt, the solution, `\n`, the instruction and `\n`. Its
/// target is a rationale ending in `I` followed by [`YES`] or [`NO`].
pub fn cot_prompt(question: &str, solution: &str) -> String {
    format!(
        "{}{}\n{COT_INSTRUCTION}\n",
        solve_prompt(question),
        solution_text(solution)
    )
}

/// A rationale's verdict target: `I` and the answer.
pub fn verdict(correct: bool) -> String {
    format!("{QUESTION}{}", if correct { YES } else { NO })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The strings are exactly those of the released data (a golden test: any edit fails).
    #[test]
    fn header_and_instructions_are_the_papers() {
        let golden = [
            "Solve the math problems and provide step-by-step solutions, ending with \"The answer is [Insert Final Answer Here]\".",
            "When asked \"Verification: Is the answer correct (Yes/No)?\", respond with \" Yes\" or \" No\" based on the answer's correctness.",
            "When asked \"Verification: Let's verify step by step.\", verify every step of the solution and conclude with \"Verification: Is the answer correct (Yes/No)?\" followed by \" Yes\" or \" No\".",
            "",
            "",
        ];
        assert_eq!(HEADER, golden.join("\n"));
        assert_eq!(QUESTION, "Verification: Is the answer correct (Yes/No)?");
        assert_eq!(COT_INSTRUCTION, "Verification: Let's verify step by step.");
        assert_eq!((YES, NO), (" Yes", " No"));
        assert_eq!(
            direct_prompt("What is 2+3?", "2+3=5.\nThe answer is 5.\n"),
            format!(
                "{HEADER}Q: What is 2+3?\nA: Let's think step by step.\n2+3=5.\nThe answer is 5.\nVerification: Is the answer correct (Yes/No)?"
            )
        );
        assert_eq!(
            cot_prompt("What is 2+3?", "2+3=5.\nThe answer is 5."),
            format!(
                "{HEADER}Q: What is 2+3?\nA: Let's think step by step.\n2+3=5.\nThe answer is 5.\nVerification: Let's verify step by step.\n"
            )
        );
        assert_eq!(
            verdict(false),
            "Verification: Is the answer correct (Yes/No)? No"
        );
        assert_eq!(question("Sort these.\n"), "Sort these.");
    }
}
